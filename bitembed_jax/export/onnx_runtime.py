"""``OnnxEncoder``: ``encode.Encoder``'s interface over an ONNX export folder, run by onnxruntime.

It imports no JAX: the exported tokenizer appends EOS itself and gives exactly the ids our ``Tokenize`` feeds
the JAX model (``st_files.write_tokenizer`` checks this at export), so plain tokenizer calls do. Stored
precisions go through ``quant.storage.model_storage`` with the scales the model folder calibrated, as
``Encoder.encode`` does.
"""
import json
import os

import numpy as np

from bitembed_jax.choices import DEFAULT_MAX_LENGTH
from bitembed_jax.quant.storage import model_storage

CONFIG_NAME = "bitembed_config.json"  # io.model_dir.CONFIG_NAME, without importing JAX


def read_onnx_export(path: str) -> dict:
    """The metadata (bitembed_config.json) of an ONNX export folder; a one-line error for anything else."""
    cfg_path = os.path.join(path, CONFIG_NAME)
    if not os.path.exists(cfg_path):
        raise FileNotFoundError(f"{cfg_path} not found: {path} is not a bitembed-jax export folder")
    with open(cfg_path) as f:
        meta = json.load(f)
    fmt = (meta.get("export") or {}).get("format")
    if fmt != "onnx":
        raise ValueError(f"{path} is not an ONNX export (export format {fmt!r}); write one with "
                         "`bitembed-jax export --format onnx`")
    model_file = os.path.join(path, meta["export"]["file"])
    if not os.path.exists(model_file):
        raise FileNotFoundError(f"{model_file} not found: the ONNX export {path} is incomplete")
    return meta


def session_options(threads: int | None = None):
    """ONNX Runtime options: every graph optimization, ``threads`` intra-op threads (None: ORT's default),
    sequential execution (the graph is a chain; parallel branches would only fight over the cores)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return opts


class OnnxEncoder:
    def __init__(self, path: str, *, max_length: int | None = None, threads: int | None = None,
                 providers=("CPUExecutionProvider",)):
        import onnxruntime as ort
        from transformers import AutoTokenizer

        self.meta = read_onnx_export(path)
        self.hidden_size = int(self.meta["model"]["hidden_size"])
        self.max_length = int(max_length or self.meta.get("max_length") or DEFAULT_MAX_LENGTH)
        self.prompts = self.meta.get("prompts") or {}
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.session = ort.InferenceSession(os.path.join(path, self.meta["export"]["file"]),
                                            sess_options=session_options(threads), providers=list(providers))

    @classmethod
    def from_pretrained(cls, path: str, **kw) -> "OnnxEncoder":
        return cls(path, **kw)

    def embed(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """L2-normalised pooled vectors (B, hidden) float32 of token ids and masks (B, T)."""
        feeds = {"input_ids": np.asarray(input_ids, np.int64), "attention_mask": np.asarray(attention_mask, np.int64)}
        return self.session.run(["sentence_embedding"], feeds)[0]

    def tokenize(self, texts) -> tuple[np.ndarray, np.ndarray]:
        """Right-padded (ids, mask) int64 of ``texts``, cut to max_length (EOS kept, as in training)."""
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="np")
        return enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)

    def encode(self, texts, *, batch_size: int = 32, prompt: str | None = None, precision: str = "fp32",
               dim: int | None = None, show_progress: bool = False):
        """Embeddings of ``texts``: float32 (n, d) for fp32, else storage-ready codes (see quant.storage)."""
        if isinstance(texts, str):
            raise TypeError("encode expects a list of strings, got a single string")
        texts = [(prompt or "") + t for t in texts]
        if not texts:
            return np.zeros((0, dim or self.hidden_size), np.float32)
        steps = range(0, len(texts), batch_size)
        if show_progress:
            from tqdm import tqdm
            steps = tqdm(steps, desc="encode")
        vecs = np.concatenate([self.embed(*self.tokenize(texts[s: s + batch_size])) for s in steps])
        if precision == "fp32" and dim is None:
            return vecs
        return model_storage(vecs, precision, self.meta, dim)
