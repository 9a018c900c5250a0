"""Quickstart: a tiny BitNet encoder on the shipped sample pairs; a few minutes on a 2-core CPU.

    bitembed-jax train --config configs/quickstart.py --workdir DIR [--init-from HF_OR_MODEL_DIR]
"""
import os

from configs import base

SAMPLE = os.path.join(os.path.dirname(__file__), "..", "bitembed_jax", "data", "sample", "pairs.jsonl")


def get_config():
    c = base.get_config()
    c.init.model = "tiny:qwen3"  # a tiny random Qwen3 made in the work dir; --init-from DIR trains another
    c.data.train_files = [os.path.abspath(SAMPLE)]
    c.data.query_max_len = 64
    c.data.passage_max_len = 96
    c.data.query_instruction = "Find the answer"
    c.loss.temperature = 0.05
    c.train.batch_size = 32
    c.train.num_steps = 60
    c.train.learning_rate = 1e-3
    c.train.warmup_steps = 10
    c.train.log_every = 5
    c.checkpoint.every_steps = 20
    return c
