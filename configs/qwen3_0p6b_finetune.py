"""Qwen3-0.6B BitNet encoder: supervised contrastive fine-tuning with hard negatives + teacher distillation.

    bitembed-jax train --config configs/qwen3_0p6b_finetune.py --workdir W --init-from PRETRAIN_WORKDIR \\
        --teacher QWEN3_0P6B_HF_FOLDER --config.data.train_files=...
"""
from configs import qwen3_0p6b_pretrain


def get_config():
    c = qwen3_0p6b_pretrain.get_config()
    c.stage = "finetune"
    c.data.num_negatives = 7
    c.loss.num_chunks = 1  # distillation runs the teacher in the same step
    c.loss.precisions.update({"fp32": 1.0, "int8": 1.0, "int4": 0.5, "int2": 0.25, "binary": 0.25})
    c.loss.matryoshka_dims = [0, 512, 256, 128]
    c.distill.sim_weight = 1.0
    c.distill.attn_weight = 10.0
    c.train.batch_size = 4096
    c.train.num_steps = 5000
    c.train.learning_rate = 5e-5
    c.train.warmup_steps = 200
    return c
