"""Gemma3-270M -> BitNet encoder, continual contrastive pre-training at a budget a 2-core CPU affords.

The real backbone with the pod recipe scaled down (bench/quality_gemma3_270m.py, README "real model"):
short sequences, 16 pairs per step, the 168M-parameter token embedding table frozen (it stays full
precision in BitNet anyway; freezing it saves its gradient and 1.3 GB of AdamW moments).

    bitembed-jax train --config configs/gemma3_270m_cpu.py --workdir RUN --init-from CONVERTED_DIR

trains on the shipped sample pairs unless --config.data.train_files says otherwise.
"""
import os

from configs import base

SAMPLE = os.path.join(os.path.dirname(__file__), "..", "bitembed_jax", "data", "sample", "pairs.jsonl")


def get_config():
    c = base.get_config()
    c.init.model = ""  # a folder from `bitembed-jax convert --gguf ... --pooling mean`
    c.init.pooling = "mean"
    c.data.train_files = [os.path.abspath(SAMPLE)]
    c.data.query_max_len = 32
    c.data.passage_max_len = 64
    c.data.query_instruction = "task: search result | query"
    c.loss.temperature = 0.05
    c.train.batch_size = 16
    c.train.num_steps = 200
    c.train.learning_rate = 3e-4
    c.train.warmup_steps = 20
    c.train.freeze = ["embed_tokens"]
    c.train.log_every = 10
    c.checkpoint.every_steps = 25
    c.mesh.data = 1
    return c
