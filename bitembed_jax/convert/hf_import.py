"""Import a local Hugging Face checkpoint folder (Qwen3, Gemma3 text) into our encoder.

Everything is checked before any tensor is read: the model type, the set of
tensor names (missing / unexpected, listed by name) and every shape. Tensors are
then read one at a time (safetensors lazily, ``pytorch_model.bin`` memory-mapped
with ``weights_only=True``), so host memory stays near one model size.
"""
import json
import os

import jax.numpy as jnp
import numpy as np
from flax import nnx

from bitembed_jax.convert.hf_config import CheckpointImportError, from_hf_config
from bitembed_jax.convert.name_maps import IGNORED_NAMES, IGNORED_SUFFIXES, PREFIXES, TRANSFORMS, expand
from bitembed_jax.io import paths
from bitembed_jax.io.model_dir import (CONFIG_NAME, TOKENIZER_FILES, abstract_model, check_writable,
                                      save_model_dir)
from bitembed_jax.io.state_paths import fill_state, flat_params
from bitembed_jax.layers.norms import inserted_norm_weights
from bitembed_jax.models import ModelConfig


class TensorSource:
    """Lazy access to the tensors of an HF folder: names + shapes first, data on demand."""

    def __init__(self, path: str):
        self.path = path
        self.where: dict[str, str] = {}
        self.shapes: dict[str, tuple] = {}
        self._bin: dict[str, dict] = {}
        self._open: dict = {}
        files = self._weight_files()
        for f in files:
            full = os.path.join(path, f)
            if not os.path.exists(full):
                raise CheckpointImportError(f"{full}: listed in the index but missing")
            try:
                for name, shape in self._scan(full):
                    self.where[name] = full
                    self.shapes[name] = tuple(shape)
            except Exception as e:
                raise CheckpointImportError(f"{full}: cannot read the weights file (corrupt or truncated?): {e}") from e

    def _weight_files(self):
        for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
            p = os.path.join(self.path, index)
            if os.path.exists(p):
                try:
                    with open(p) as f:
                        return sorted(set(json.load(f)["weight_map"].values()))
                except (json.JSONDecodeError, KeyError) as e:
                    raise CheckpointImportError(f"{p}: not a valid weights index: {e}") from e
        for single in ("model.safetensors", "pytorch_model.bin"):
            if os.path.exists(os.path.join(self.path, single)):
                return [single]
        raise CheckpointImportError(f"{self.path}: no model.safetensors(.index.json) or pytorch_model.bin(.index.json)")

    def _scan(self, full):
        if full.endswith(".safetensors"):
            from safetensors import safe_open
            with safe_open(full, framework="flax") as f:
                for k in f.keys():
                    yield k, f.get_slice(k).get_shape()
        else:
            import torch  # only for legacy .bin files
            sd = torch.load(full, map_location="cpu", weights_only=True, mmap=True)
            self._bin[full] = sd
            for k, v in sd.items():
                yield k, v.shape

    def get(self, name: str) -> np.ndarray:
        full = self.where[name]
        try:
            if full.endswith(".safetensors"):
                if full not in self._open:
                    from safetensors import safe_open
                    self._open[full] = safe_open(full, framework="flax")
                return np.asarray(self._open[full].get_tensor(name).astype(jnp.float32))
            return self._bin[full][name].float().numpy()
        except Exception as e:
            raise CheckpointImportError(f"{full}: cannot read tensor {name} (corrupt or truncated?): {e}") from e


def _resolve_prefix(names, expected_first: str) -> str:
    for p in PREFIXES:
        if p + expected_first in names:
            return p
    return ""


def plan_import(src: TensorSource, cfg: ModelConfig, abs_shapes: dict):
    """Validate names and shapes; return [(hf_name, our_path, transform)]. Raises before any data is read."""
    mapping = expand(cfg.arch, cfg.num_layers, cfg.attention_bias)
    prefix = _resolve_prefix(src.shapes, mapping[0][0])
    expected = {prefix + h: (o, t) for h, o, t in mapping}
    names = set(src.shapes)
    ignored = {n for n in names if n.endswith(IGNORED_SUFFIXES) or n in IGNORED_NAMES}
    missing = sorted(set(expected) - names)
    unexpected = sorted(names - set(expected) - ignored)
    if missing or unexpected:
        msg = [f"{src.path}: tensors do not match a {cfg.arch} model with {cfg.num_layers} layers"]
        if missing:
            msg.append(f"missing tensors ({len(missing)}): {', '.join(missing[:20])}"
                       + (" ..." if len(missing) > 20 else ""))
        if unexpected:
            msg.append(f"unexpected tensors ({len(unexpected)}): {', '.join(unexpected[:20])}"
                       + (" ..." if len(unexpected) > 20 else ""))
        raise CheckpointImportError("\n".join(msg))
    for hf_name, (ours, transform) in expected.items():
        shape = src.shapes[hf_name]
        want = abs_shapes[ours]
        got = tuple(reversed(shape)) if transform == "transpose" else tuple(shape)
        if got != tuple(want):
            want_hf = tuple(reversed(want)) if transform == "transpose" else tuple(want)
            raise CheckpointImportError(f"{src.where[hf_name]}: tensor {hf_name} has shape {tuple(shape)}, "
                                        f"expected {want_hf} from config.json")
    return [(h, o, t) for h, (o, t) in expected.items()]


def _our_folder(path: str) -> str | None:
    """What kind of bitembed-jax folder ``path`` is ("model", or the export format), None if not one of ours."""
    try:
        with open(os.path.join(path, CONFIG_NAME)) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    return (meta.get("export") or {}).get("format") or "model"


def read_hf_config(path: str) -> tuple[dict, str]:
    if not os.path.isdir(path):
        raise CheckpointImportError(f"--hf {path}: {'not found' if not os.path.exists(path) else 'not a folder'}; "
                                    "give a Hugging Face model folder (config.json + weights), or --gguf FILE")
    ours = _our_folder(path)
    if ours == "model":
        raise CheckpointImportError(f"{path} is already a bitembed-jax model folder: use it as it is "
                                    "(--init-from, encode, export), or convert the HF checkpoint it came from")
    if ours is not None:  # an export holds packed ternary (or ONNX) weights, not an HF checkpoint's
        raise CheckpointImportError(f"{path} is a bitembed-jax {ours} export folder (packed weights for serving), "
                                    "not a Hugging Face checkpoint: convert the HF checkpoint it came from, or use "
                                    "the model folder it was exported from")
    cfg_path = os.path.join(path, "config.json")
    if not os.path.exists(cfg_path):
        raise CheckpointImportError(f"{cfg_path} not found: {path} is not a Hugging Face model folder")
    try:
        with open(cfg_path) as f:
            return json.load(f), cfg_path
    except json.JSONDecodeError as e:
        raise CheckpointImportError(f"{cfg_path}: invalid JSON: {e}") from e


def import_from_source(cfg: ModelConfig, src):
    """(model, cfg) from our config and a tensor source (``path``, ``where``, ``shapes``, ``get``)."""
    abstract = abstract_model(cfg)
    inserted = inserted_norm_weights(abstract)  # norm refinement: no HF tensor, identity-scaled at the start
    graphdef, abs_state = nnx.split(abstract)
    abs_leaves = flat_params(abs_state)
    plan = plan_import(src, cfg, {k: v.shape for k, v in abs_leaves.items()})
    values = {}
    for hf_name, ours, transform in plan:
        values[ours] = jnp.asarray(TRANSFORMS[transform](src.get(hf_name)), abs_leaves[ours].dtype)
    for p, leaf in abs_leaves.items():
        if p not in values:
            if p not in inserted:
                raise CheckpointImportError(f"internal: no HF tensor maps to {p}")
            values[p] = jnp.ones(leaf.shape, leaf.dtype)
    return nnx.merge(graphdef, fill_state(abs_state, values)), cfg


def import_hf(path: str, **encoder_opts):
    """(model, cfg) from a local HF folder. ``encoder_opts`` are ModelConfig fields (mode, norm, ...)."""
    hf, cfg_path = read_hf_config(path)
    cfg = from_hf_config(hf, cfg_path, **encoder_opts)  # a bad config fails before the weights are scanned
    return import_from_source(cfg, TensorSource(path))


def check_tokenizer_files(path: str):
    """The tokenizer files copied into the model folder: encode and export read its tokenizer_config.json, and
    AutoTokenizer a vocabulary beside it; without them the model folder would fail later, in training or encode."""
    have = [n for n in TOKENIZER_FILES if os.path.exists(os.path.join(path, n))]
    if "tokenizer_config.json" in have and {"tokenizer.json", "tokenizer.model", "vocab.json"} & set(have):
        return
    if not have:
        raise CheckpointImportError(f"{path}: no tokenizer files (tokenizer.json / tokenizer_config.json); "
                                    "a model folder needs its tokenizer")
    raise CheckpointImportError(f"{path}: incomplete tokenizer (only {', '.join(have)}); a model folder needs "
                                "tokenizer_config.json and tokenizer.json (or tokenizer.model / vocab.json)")


def convert(hf_path: str, out_dir: str, *, overwrite: bool = False, **encoder_opts) -> str:
    paths.check_apart("--out", out_dir, [("--hf", hf_path)], "convert into another folder")
    check_writable(out_dir, overwrite)
    hf, cfg_path = read_hf_config(hf_path)
    cfg = from_hf_config(hf, cfg_path, **encoder_opts)
    check_tokenizer_files(hf_path)  # as import_hf, with the tokenizer checked too before the weights are scanned
    model, cfg = import_from_source(cfg, TensorSource(hf_path))
    return save_model_dir(out_dir, model, cfg, tokenizer_dir=hf_path, overwrite=overwrite,
                          extra={"source": {"hf_path": os.path.abspath(hf_path)}})
