"""The fine-tuning recipe shared by the paper-scale backbones (stage 3+4 on top of a pretrain config)."""


def apply(c, learning_rate: float):
    c.stage = "finetune"
    c.data.num_negatives = 7
    c.loss.num_chunks = 1  # distillation runs the teacher in the same step
    c.loss.precisions.update({"fp32": 1.0, "int8": 1.0, "int4": 0.5, "int2": 0.25, "binary": 0.25})
    c.loss.matryoshka_dims = [0, 512, 256, 128]
    c.distill.sim_weight = 1.0
    c.distill.attn_weight = 10.0
    c.train.batch_size = 4096
    c.train.num_steps = 5000
    c.train.learning_rate = learning_rate
    c.train.warmup_steps = 200
    return c
