"""Gemma3-270M BitNet encoder: distillation fine-tuning at the 2-core-CPU budget of gemma3_270m_cpu.py.

Multi-precision contrastive loss (fp32, int8, int4, binary) + similarity-distribution and attention-relation
distillation from the full-precision teacher (--teacher). In-batch negatives only: the CPU budget has no
room for hard-negative passages (each one adds a passage forward per query).
"""
from configs import gemma3_270m_cpu


def get_config():
    c = gemma3_270m_cpu.get_config()
    c.stage = "finetune"
    c.train.num_steps = 150
    c.train.learning_rate = 1e-4
    c.train.warmup_steps = 10
    c.loss.precisions.update({"fp32": 1.0, "int8": 0.5, "int4": 0.5, "binary": 0.25})
    c.distill.sim_weight = 1.0
    c.distill.attn_weight = 1.0
    c.distill.tau_student = 0.05
    c.distill.tau_teacher = 0.05
    c.distill.relation_heads = 4
    return c
