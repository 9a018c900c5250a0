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

from bitembed_jax.convert.name_maps import IGNORED_NAMES, IGNORED_SUFFIXES, PREFIXES, TRANSFORMS, expand
from bitembed_jax.io.model_dir import TOKENIZER_FILES, abstract_model, check_writable, save_model_dir
from bitembed_jax.io.state_paths import fill_state, flat_params
from bitembed_jax.models import ModelConfig

SUPPORTED = {"qwen3": "qwen3", "gemma3_text": "gemma3"}


class CheckpointImportError(ValueError):
    """A checkpoint that cannot be imported; the message names the culprit."""


def _rope(hf: dict, layer_type: str):
    params = hf.get("rope_parameters") or {}
    if layer_type in params:  # Gemma3: one entry per layer type
        params = params[layer_type]
    legacy = hf.get("rope_scaling") or {}
    theta = params.get("rope_theta", hf.get("rope_theta"))
    rtype = params.get("rope_type", legacy.get("rope_type", "default"))
    factor = params.get("factor", legacy.get("factor", 1.0))
    if rtype not in ("default", "linear"):
        raise CheckpointImportError(f"rope_type {rtype!r} ({layer_type}) is not supported; supported: default, linear")
    return theta, rtype, float(factor)


def model_config_from_hf(hf: dict, config_path: str = "config.json", **encoder_opts) -> ModelConfig:
    mtype = hf.get("model_type")
    if mtype not in SUPPORTED:
        raise CheckpointImportError(f"{config_path}: model_type {mtype!r} is not supported; "
                                    f"supported model types: {', '.join(sorted(SUPPORTED))}")
    arch = SUPPORTED[mtype]
    n = hf["num_hidden_layers"]
    theta, rtype, factor = _rope(hf, "full_attention")
    layer_types = tuple(hf.get("layer_types") or ["full_attention"] * n)
    eos = hf.get("eos_token_id")
    common = dict(
        arch=arch, vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"], num_layers=n, num_heads=hf["num_attention_heads"],
        num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        head_dim=hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"],
        rms_norm_eps=hf.get("rms_norm_eps", 1e-6), rope_theta=theta or 1_000_000.0, rope_type=rtype,
        rope_factor=factor, layer_types=layer_types, attention_bias=bool(hf.get("attention_bias", False)),
        pad_token_id=hf.get("pad_token_id"), eos_token_id=eos[0] if isinstance(eos, list) else eos,
    )
    if arch == "qwen3":
        act = hf.get("hidden_act", "silu")
        if act != "silu":
            raise CheckpointImportError(f"{config_path}: hidden_act {act!r} is not supported for qwen3 (expects silu)")
        window = hf.get("sliding_window") if hf.get("use_sliding_window") else None
        extra = dict(rope_local_theta=common["rope_theta"], sliding_window=window)
    else:
        act = hf.get("hidden_activation") or hf.get("hidden_act")
        if act not in ("gelu_pytorch_tanh", None):
            raise CheckpointImportError(f"{config_path}: hidden_activation {act!r} is not supported for gemma3")
        local_theta, _, _ = _rope(hf, "sliding_attention")
        window = hf.get("sliding_window")
        bidir = bool(hf.get("use_bidirectional_attention"))
        if bidir:  # the config on disk holds the causal window; HF halves it for bidirectional attention
            window = window // 2 + 1
            encoder_opts.setdefault("attention", "bidirectional")
        extra = dict(rope_local_theta=local_theta or hf.get("rope_local_base_freq", 10_000.0),
                     sliding_window=window, query_pre_attn_scalar=hf.get("query_pre_attn_scalar"))
        if hf.get("attn_logit_softcapping"):
            raise CheckpointImportError(f"{config_path}: attn_logit_softcapping is not supported")
    return ModelConfig(**{**common, **extra, **encoder_opts})


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


def inserted_norm(path: str) -> bool:
    """Norm-refinement weights that HF checkpoints don't have; they start identity-scaled."""
    return path.endswith((".norm.weight", "o_norm.weight", "down_norm.weight"))


def read_hf_config(path: str) -> tuple[dict, str]:
    cfg_path = os.path.join(path, "config.json")
    if not os.path.exists(cfg_path):
        if os.path.exists(os.path.join(path, "bitembed_config.json")):
            raise CheckpointImportError(f"{path} is already a bitembed-jax model folder: use it as it is "
                                        "(--init-from, encode, export), or convert the HF checkpoint it came from")
        raise CheckpointImportError(f"{cfg_path} not found: {path} is not a Hugging Face model folder")
    try:
        with open(cfg_path) as f:
            return json.load(f), cfg_path
    except json.JSONDecodeError as e:
        raise CheckpointImportError(f"{cfg_path}: invalid JSON: {e}") from e


def import_from_source(cfg: ModelConfig, src):
    """(model, cfg) from our config and a tensor source (``path``, ``where``, ``shapes``, ``get``)."""
    graphdef, abs_state = nnx.split(abstract_model(cfg))
    abs_leaves = flat_params(abs_state)
    plan = plan_import(src, cfg, {k: v.shape for k, v in abs_leaves.items()})
    values = {}
    for hf_name, ours, transform in plan:
        values[ours] = jnp.asarray(TRANSFORMS[transform](src.get(hf_name)), abs_leaves[ours].dtype)
    for p, leaf in abs_leaves.items():
        if p not in values:
            if not inserted_norm(p):
                raise CheckpointImportError(f"internal: no HF tensor maps to {p}")
            values[p] = jnp.ones(leaf.shape, leaf.dtype)
    return nnx.merge(graphdef, fill_state(abs_state, values)), cfg


def import_hf(path: str, **encoder_opts):
    """(model, cfg) from a local HF folder. ``encoder_opts`` are ModelConfig fields (mode, norm, ...)."""
    hf, cfg_path = read_hf_config(path)
    cfg = model_config_from_hf(hf, cfg_path, **encoder_opts)  # a bad config fails before the weights are scanned
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
    check_writable(out_dir, overwrite)
    hf, cfg_path = read_hf_config(hf_path)
    cfg = model_config_from_hf(hf, cfg_path, **encoder_opts)
    check_tokenizer_files(hf_path)  # as import_hf, with the tokenizer checked too before the weights are scanned
    model, cfg = import_from_source(cfg, TensorSource(hf_path))
    return save_model_dir(out_dir, model, cfg, tokenizer_dir=hf_path, overwrite=overwrite,
                          extra={"source": {"hf_path": os.path.abspath(hf_path)}})
