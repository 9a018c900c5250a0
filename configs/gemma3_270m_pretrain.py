"""Gemma3-270M -> BitNet encoder, continual contrastive pre-training on a TPU pod."""
from configs import base


def get_config():
    c = base.get_config()
    c.init.model = "google/gemma-3-270m"  # a local snapshot folder of it
    c.data.query_max_len = 64
    c.data.passage_max_len = 256
    c.data.query_instruction = "task: search result | query"
    c.loss.temperature = 0.02
    c.loss.num_chunks = 2
    c.train.batch_size = 65536
    c.train.num_steps = 20000
    c.train.learning_rate = 3e-4
    c.train.warmup_steps = 1000
    c.train.dtype = "bfloat16"
    c.train.remat = True
    c.mesh.data = -1
    c.mesh.fsdp = 8
    c.mesh.tensor = 1
    c.checkpoint.every_steps = 1000
    return c
