"""Quickstart stage 2: fine-tune the quickstart encoder with distillation from its fp teacher, multi-precision.

    bitembed-jax train --config configs/quickstart_finetune.py --workdir RUN2 --init-from RUN1 --teacher TINY_HF
"""
from configs import quickstart


def get_config():
    c = quickstart.get_config()
    c.stage = "finetune"
    c.init.model = ""  # the quickstart's trained run: --init-from RUN1
    c.train.num_steps = 40
    c.train.learning_rate = 5e-4
    c.loss.precisions.update({"fp32": 1.0, "int8": 0.5, "int4": 0.5, "binary": 0.25})
    c.loss.matryoshka_dims = [0, 32]
    c.distill.sim_weight = 1.0
    c.distill.attn_weight = 1.0
    c.distill.tau_student = 0.05
    c.distill.tau_teacher = 0.05
    # the shipped sample has hard negatives for only some pairs: in-batch negatives here
    c.data.num_negatives = 0
    return c
