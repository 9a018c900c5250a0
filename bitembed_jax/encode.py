"""``Encoder``: text in, embedding vectors out, from one of our model folders."""
import os
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bitembed_jax.io.model_dir import load_model_dir, read_config
from bitembed_jax.models import embed


def _bucket(n: int, max_length: int) -> int:
    """Pad lengths to powers of two (>= 16) so a corpus compiles a handful of shapes, not one per batch."""
    b = 16
    while b < n:
        b *= 2
    return min(b, max_length)


def tokenize(tokenizer, texts, max_length: int, append_eos: bool, eos_id):
    """Right-padded int32 ids and mask; EOS appended (within max_length) when pooling needs it."""
    enc = tokenizer(list(texts), add_special_tokens=True, truncation=True,
                    max_length=max_length - (1 if append_eos else 0))["input_ids"]
    if append_eos:
        enc = [ids if ids and ids[-1] == eos_id else ids + [eos_id] for ids in enc]
    width = _bucket(max(len(x) for x in enc), max_length)
    ids = np.zeros((len(enc), width), np.int32)
    mask = np.zeros((len(enc), width), np.int32)
    for i, x in enumerate(enc):
        ids[i, : len(x)] = x
        mask[i, : len(x)] = 1
    return ids, mask


class Encoder:
    def __init__(self, model, tokenizer, *, max_length: int = 512, prompts: dict | None = None, meta=None):
        self.cfg = model.cfg
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.prompts = prompts or {}
        self.meta = meta or {}
        self._graphdef, self._state = nnx.split(model)
        eos = self.cfg.eos_token_id if self.cfg.eos_token_id is not None else tokenizer.eos_token_id
        if self.cfg.pooling == "last" and eos is None:
            raise ValueError("last-token pooling needs an EOS token: the model config and tokenizer have none")
        self.eos_id = eos

    @classmethod
    def from_pretrained(cls, path: str, *, max_length: int = 512, trust_remote_code: bool = False, **overrides):
        from transformers import AutoTokenizer

        _, meta = read_config(path)
        model, _ = load_model_dir(path, **overrides)
        if not os.path.exists(os.path.join(path, "tokenizer_config.json")):
            raise FileNotFoundError(f"{path}: no tokenizer files (tokenizer_config.json) in the model folder")
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        return cls(model, tok, max_length=max_length, prompts=meta.get("prompts"), meta=meta)

    @partial(jax.jit, static_argnums=0)
    def _embed(self, state, ids, mask):
        return embed(nnx.merge(self._graphdef, state), ids, mask)

    def encode(self, texts, *, batch_size: int = 32, prompt: str | None = None, precision: str = "fp32",
               dim: int | None = None, show_progress: bool = False):
        """Embeddings of ``texts``: float32 (n, d) for fp32, else storage-ready codes (see quant.embedding)."""
        if isinstance(texts, str):
            raise TypeError("encode expects a list of strings, got a single string")
        texts = [(prompt or "") + t for t in texts]
        if not texts:
            return np.zeros((0, dim or self.cfg.hidden_size), np.float32)
        out = []
        steps = range(0, len(texts), batch_size)
        if show_progress:
            from tqdm import tqdm
            steps = tqdm(steps, desc="encode")
        for s in steps:
            chunk = texts[s: s + batch_size]
            ids, mask = tokenize(self.tokenizer, chunk, self.max_length, self.cfg.pooling == "last", self.eos_id)
            n = len(chunk)
            if n < batch_size and len(texts) > batch_size:  # keep one batch shape: pad the tail batch
                ids = np.pad(ids, ((0, batch_size - n), (0, 0)))
                mask = np.pad(mask, ((0, batch_size - n), (0, 0)), constant_values=1)
            out.append(np.asarray(self._embed(self._state, jnp.asarray(ids), jnp.asarray(mask)))[:n])
        vecs = np.concatenate(out)
        if precision == "fp32" and dim is None:
            return vecs
        from bitembed_jax.quant.embedding import encode_storage
        return encode_storage(vecs, precision, dim=dim, scale=self.meta.get("embedding_scales", {}).get(precision))
