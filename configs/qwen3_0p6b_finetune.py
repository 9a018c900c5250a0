"""Qwen3-0.6B BitNet encoder: supervised contrastive fine-tuning with hard negatives + teacher distillation.

    bitembed-jax train --config configs/qwen3_0p6b_finetune.py --workdir W --init-from PRETRAIN_WORKDIR \\
        --teacher QWEN3_0P6B_HF_FOLDER --config.data.train_files=...
"""
from configs import pod_finetune, qwen3_0p6b_pretrain


def get_config():
    return pod_finetune.apply(qwen3_0p6b_pretrain.get_config(), learning_rate=5e-5)
