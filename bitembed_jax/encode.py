"""``Encoder``: text in, embedding vectors out, from one of our model folders."""
import os
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bitembed_jax.choices import DEFAULT_MAX_LENGTH, INT8_PLATFORMS
from bitembed_jax.data.tokenize import Tokenize
from bitembed_jax.io.load import load_model_dir
from bitembed_jax.io.model_dir import CONFIG_NAME, read_config
from bitembed_jax.models import embed
from bitembed_jax.quant.calibration import Calibration, model_calibration
from bitembed_jax.quant.storage import encode_storage, model_storage


def _bucket(n: int, max_length: int) -> int:
    """Pad lengths to powers of two (>= 16) so a corpus compiles a handful of shapes, not one per batch."""
    b = 16
    while b < n:
        b *= 2
    return min(b, max_length)


def tokenize(tokenizer: Tokenize, texts, max_length: int):
    """Right-padded ids/mask as training saw them, cut to a bucketed width."""
    ids, mask = tokenizer(texts, max_length)
    width = _bucket(int(mask.sum(axis=1).max()), max_length)
    return ids[:, :width], mask[:, :width]


class Encoder:
    def __init__(self, model, tokenizer, *, max_length: int = DEFAULT_MAX_LENGTH, prompts: dict | None = None,
                 meta=None):
        self.cfg = model.cfg
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.prompts = prompts or {}
        self.meta = meta or {}
        self.calibration = model_calibration(self.meta)  # the folder's, or None: what encode codes with by default
        self._graphdef, self._state = nnx.split(model)
        self._tokenize = Tokenize(tokenizer, add_eos=self.cfg.pooling == "last")

    @classmethod
    def from_pretrained(cls, path: str, *, max_length: int | None = None, trust_remote_code: bool = False,
                        **overrides):
        """``max_length`` defaults to the folder's own (an export records the one it was made for)."""
        from transformers import AutoTokenizer

        _, meta = read_config(path)
        model_calibration(meta, os.path.join(path, CONFIG_NAME))  # a malformed one is named before the weights load
        max_length = int(max_length or meta.get("max_length") or DEFAULT_MAX_LENGTH)
        overrides.setdefault("code_matmul", "int8" if jax.default_backend() in INT8_PLATFORMS else "bfloat16")
        model, _ = load_model_dir(path, **overrides)
        if not os.path.exists(os.path.join(path, "tokenizer_config.json")):
            raise FileNotFoundError(f"{path}: no tokenizer files (tokenizer_config.json) in the model folder")
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        return cls(model, tok, max_length=max_length, prompts=meta.get("prompts"), meta=meta)

    @partial(jax.jit, static_argnums=0)
    def _embed(self, state, ids, mask):
        return embed(nnx.merge(self._graphdef, state), ids, mask)

    def encode(self, texts, *, batch_size: int = 32, prompt: str | None = None, precision: str = "fp32",
               dim: int | None = None, show_progress: bool = False, calibration="model"):
        """Embeddings of ``texts``: float32 (n, d) for fp32, else storage-ready codes (``quant.storage``).

        ``calibration`` (int and binary codes): "model" for the folder's own per-dimension statistics (none if it
        has none), "none" for plain per-vector codes, or a ``Calibration`` (e.g. ``calibrate``'s on a corpus).
        """
        self._calibration(calibration)  # a bad value fails before the texts are encoded
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
            ids, mask = tokenize(self._tokenize, chunk, self.max_length)
            n = len(chunk)
            if n < batch_size and len(texts) > batch_size:  # keep one batch shape: pad the tail batch
                ids = np.pad(ids, ((0, batch_size - n), (0, 0)))
                mask = np.pad(mask, ((0, batch_size - n), (0, 0)), constant_values=1)
            out.append(np.asarray(self._embed(self._state, jnp.asarray(ids), jnp.asarray(mask)))[:n])
        vecs = np.concatenate(out)
        if precision == "fp32" and dim is None:
            return vecs
        return self.store(vecs, precision, dim, calibration)

    def store(self, vecs: np.ndarray, precision: str, dim: int | None = None, calibration="model"):
        """``encode``'s storage step for float vectors it made: StoredEmbeddings at ``precision``."""
        cal = self._calibration(calibration)
        if calibration == "model" and cal is None:
            return model_storage(vecs, precision, self.meta, dim)  # the folder's global scales, if any
        return encode_storage(vecs, precision, dim, calibration=cal)

    def _calibration(self, calibration) -> Calibration | None:
        if isinstance(calibration, Calibration):
            return calibration
        if calibration == "model":
            return self.calibration
        if calibration == "none":
            return None
        raise ValueError(f"calibration must be 'model', 'none' or a Calibration, got {calibration!r}")

    def calibrate(self, texts, *, method: str = "standardize", batch_size: int = 32, prompt: str | None = None,
                  source: str = "", show_progress: bool = False) -> Calibration:
        """Per-dimension statistics of the vectors of ``texts`` (a sample of what will be stored, e.g. a corpus
        at indexing time), to pass as ``encode(..., calibration=...)`` or to save with ``bitembed-jax
        calibrate``."""
        vecs = self.encode(texts, batch_size=batch_size, prompt=prompt, show_progress=show_progress)
        return Calibration.fit(vecs, method, source=source or f"{len(texts)} texts")
