"""Qwen3-0.6B -> BitNet encoder, continual contrastive pre-training on a TPU pod (e.g. v5e-256)."""
from configs import base


def get_config():
    c = base.get_config()
    c.init.model = "Qwen/Qwen3-0.6B"  # a local snapshot folder of it (huggingface-cli download)
    c.data.query_max_len = 64
    c.data.passage_max_len = 256
    c.loss.temperature = 0.02
    c.loss.num_chunks = 4
    c.train.batch_size = 65536
    c.train.num_steps = 20000
    c.train.learning_rate = 2e-4
    c.train.warmup_steps = 1000
    c.train.dtype = "bfloat16"
    c.train.remat = True
    c.mesh.data = -1
    c.mesh.fsdp = 16
    c.mesh.tensor = 1
    c.checkpoint.every_steps = 1000
    return c
