"""Gemma3-270M BitNet encoder: supervised contrastive fine-tuning with hard negatives + teacher distillation."""
from configs import gemma3_270m_pretrain


def get_config():
    c = gemma3_270m_pretrain.get_config()
    c.stage = "finetune"
    c.data.num_negatives = 7
    c.loss.num_chunks = 1
    c.loss.precisions.update({"fp32": 1.0, "int8": 1.0, "int4": 0.5, "int2": 0.25, "binary": 0.25})
    c.loss.matryoshka_dims = [0, 512, 256, 128]
    c.distill.sim_weight = 1.0
    c.distill.attn_weight = 10.0
    c.train.batch_size = 4096
    c.train.num_steps = 5000
    c.train.learning_rate = 1e-4
    c.train.warmup_steps = 200
    return c
