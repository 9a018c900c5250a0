"""Tiny random Hugging Face checkpoints made locally (no hub access)."""
import os

import torch

from bitembed_jax.testing import tiny_hf

VOCAB = 512
# a fixed local corpus for the tokenizer, so fixtures don't depend on the shipped sample's wording
_TEXTS = [f"sentence number {i} about topic {i % 7} with words alpha beta gamma delta" for i in range(200)]


def make_tiny_hf(arch: str, out_dir: str, seed: int = 0, **config_kw):
    return tiny_hf.make_tiny_hf(arch, out_dir, seed=seed, texts=_TEXTS, vocab_size=VOCAB, perturb_norms=True,
                                **config_kw)


def load_hf(path: str):
    from transformers import AutoModel
    return AutoModel.from_pretrained(path, attn_implementation="eager", dtype=torch.float32).eval()


# the public data sets live in shared/ beside the repository (as CI lays it out)
SHARED_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                           "shared", "data")
