"""Import a GGUF checkpoint (e.g. Gemma3-270M Q4_K_M) through transformers' own GGUF reader.

transformers dequantizes every GGUF tensor to a dense torch tensor when it
loads the file (it needs the ``gguf`` package); we take the loaded model's
state dict and config from memory and map them with the same name map as an
HF folder. transformers refuses ``save_pretrained`` on a GGUF-loaded model, so
nothing here goes through a saved HF folder. The tokenizer, rebuilt by
transformers from the GGUF metadata, is saved with our model folder.
"""
import os
import tempfile

import numpy as np

from bitembed_jax.convert.hf_config import CheckpointImportError, from_hf_config
from bitembed_jax.convert.hf_import import import_from_source
from bitembed_jax.io import paths
from bitembed_jax.io.model_dir import check_writable, save_model_dir


class StateDictSource:
    """The tensor-source interface of ``hf_import.TensorSource`` over an in-memory torch state dict."""

    def __init__(self, path: str, state_dict: dict):
        self.path = path
        self._sd = state_dict
        self.where = {k: path for k in state_dict}
        self.shapes = {k: tuple(v.shape) for k, v in state_dict.items()}

    def get(self, name: str) -> np.ndarray:
        return self._sd[name].detach().float().numpy()


def _check_file(gguf_file: str):
    if not os.path.isfile(gguf_file):
        raise CheckpointImportError(f"{gguf_file}: GGUF file not found")
    with open(gguf_file, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise CheckpointImportError(f"{gguf_file}: not a GGUF file (starts with {magic!r}, expected b'GGUF')")


def load_gguf(gguf_file: str, **encoder_opts):
    """(our ModelConfig, tensor source, tokenizer) of a GGUF file, dequantized to fp32 by transformers."""
    _check_file(gguf_file)
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise CheckpointImportError(f"GGUF import needs torch, transformers and gguf installed: {e}") from e
    folder, name = os.path.split(os.path.abspath(gguf_file))
    try:
        hf_cfg = AutoConfig.from_pretrained(folder, gguf_file=name)
    except Exception as e:  # transformers' message names the unsupported architecture
        raise CheckpointImportError(f"{gguf_file}: transformers cannot read this GGUF file: {e}") from e
    # the architecture check happens before the (slow) dequantization of every tensor
    cfg = from_hf_config(hf_cfg.to_dict(), gguf_file, **encoder_opts)
    # the config passed on: transformers parses the whole GGUF (262k vocabulary entries for Gemma3) for each
    # config it reads, ~20 s a parse on a 2-core machine
    lm = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, config=hf_cfg, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    return cfg, StateDictSource(gguf_file, lm.state_dict()), tok


def import_gguf(gguf_file: str, **encoder_opts):
    """(model, cfg, tokenizer) from a GGUF file; ``encoder_opts`` as for ``import_hf``."""
    cfg, src, tok = load_gguf(gguf_file, **encoder_opts)
    model, cfg = import_from_source(cfg, src)
    return model, cfg, tok


def convert_gguf(gguf_file: str, out_dir: str, *, overwrite: bool = False, **encoder_opts) -> str:
    paths.check_apart("--out", out_dir, [("--gguf", gguf_file)], "convert into another folder")
    check_writable(out_dir, overwrite)
    model, cfg, tok = import_gguf(gguf_file, **encoder_opts)
    with tempfile.TemporaryDirectory() as tok_dir:
        tok.save_pretrained(tok_dir)
        return save_model_dir(out_dir, model, cfg, tokenizer_dir=tok_dir, overwrite=overwrite,
                              extra={"source": {"gguf_file": os.path.abspath(gguf_file)}})
