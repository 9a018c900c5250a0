"""Gemma3-270M BitNet encoder: supervised contrastive fine-tuning with hard negatives + teacher distillation."""
from configs import gemma3_270m_pretrain, pod_finetune


def get_config():
    return pod_finetune.apply(gemma3_270m_pretrain.get_config(), learning_rate=1e-4)
