"""Load a model folder of either kind: ours (orbax ``params/``) or an export (base3 / bitnet-2bit packed weights).

An export folder reads back into our JAX model bit for bit.

The export keeps only the ternary codes q and each linear's scale gamma, not the latent float weights.
Putting q * gamma back as the latent kernel would not do: training-mode BitLinear re-quantizes its kernel,
and mean(|q * gamma|) = gamma * mean(|q|) != gamma, so the scale would change. Instead every BitLinear of
the loaded model is *frozen*: its kernel holds q * gamma and its ``frozen_scale`` holds gamma, and its
forward uses clip(round(kernel / gamma), -1, 1) * gamma = q * gamma exactly (q * gamma / gamma is exact in
floating point for q in {-1, 0, 1}). That is the very weight the checkpoint's forward uses (``ternary_ste``
returns ternary_quantize(w) exactly), so the embeddings equal the checkpoint's bit for bit, jitted or not
(with float32 token embeddings and norms; bf16 or int8 embeddings are as close as their rounding allows).
A frozen model is for inference: rounding has no gradient.
"""
import json
import os

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
import numpy as np
from flax import nnx
from safetensors import safe_open

from bitembed_jax.convert.name_maps import LINEAR, TRANSFORMS, expand
from bitembed_jax.io.model_dir import PARAMS_DIR, abstract_model, onnx_folder_message, read_config
from bitembed_jax.io.state_paths import fill_state, flat_params
from bitembed_jax.layers.bitlinear import FrozenScale, linears
from bitembed_jax.quant.packing import unpack_base3, unpack_bitnet_2bit

WEIGHTS = "model.safetensors"
SUPPORTED_VERSIONS = (1,)


def _read(path: str):
    with safe_open(os.path.join(path, WEIGHTS), framework="np") as f:
        return f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}


def _base3(raw: dict, st_meta: dict, lins: dict):
    lin_meta = json.loads(st_meta["linears"])
    values, scales = {}, {}
    for k, v in raw.items():
        if k.endswith(".base3"):
            path = k[: -len(".base3")]
            m = lin_meta[path]
            q = unpack_base3(v, m["shape"]).T.astype(np.float32)  # (in, out)
            scale = raw[path + ".scale"].astype(np.float32)
            scale = scale.reshape(1, -1) if m["per_row_scale"] else scale.reshape(())
            values[path] = q * scale
            scales[path] = scale
        elif k.endswith(".int8"):
            path = k[: -len(".int8")]
            values[path] = raw[k].astype(np.float32) * raw[path + ".row_scale"].astype(np.float32)[:, None]
        elif not k.endswith((".scale", ".row_scale")):
            values[k] = raw[k].astype(np.float32)
    missing = sorted(set(lins) - set(scales))
    if missing:
        raise ValueError(f"base3 export lacks the packed weights of {missing[:5]}")
    return values, scales


def _bitnet_2bit(raw: dict, st_meta: dict, cfg, lins: dict):
    if "gamma" not in st_meta:
        raise ValueError("this bitnet-2bit file has no exact scales in its metadata (not written by bitembed-jax)")
    gammas = json.loads(st_meta["gamma"])
    values, scales = {}, {}
    for hf_name, ours, transform in expand(cfg.arch, cfg.num_layers, cfg.attention_bias):
        if transform != LINEAR:
            values[ours] = raw[hf_name].astype(np.float32)
            continue
        base = hf_name[: -len(".weight")]
        din, dout = lins[ours].kernel.shape
        q = TRANSFORMS[LINEAR](unpack_bitnet_2bit(raw[hf_name], dout)).astype(np.float32)
        gamma = np.float32(gammas[base])
        values[ours] = q * gamma
        scales[ours] = np.asarray(gamma, np.float32).reshape(())
        if lins[ours].norm is not None:
            values[ours[: -len("kernel")] + "norm.weight"] = raw[base + ".rms_norm.weight"].astype(np.float32)
    return values, scales


def load_export(path: str, **overrides):
    """(model, cfg) from an export folder; ``overrides`` change encoder-side options (dtype, attention...)."""
    path = os.path.abspath(path)
    cfg, meta = read_config(path)
    info = meta.get("export") or {}
    fmt, version = info.get("format"), int(info.get("version", 1))
    if fmt == "onnx":
        raise ValueError(onnx_folder_message(path))
    if fmt not in ("base3", "bitnet-2bit"):
        raise ValueError(f"{path} is not an export folder (bitembed_config.json has no export section); "
                         "model folders load with bitembed_jax.io.load.load_model_dir")
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(f"{path}: export format version {version} is newer than this bitembed-jax reads "
                         f"({SUPPORTED_VERSIONS}); upgrade bitembed-jax")
    cfg = cfg.replace(**overrides) if overrides else cfg
    abstract = abstract_model(cfg)
    lins = linears(abstract)
    st_meta, raw = _read(path)
    if fmt == "base3":
        values, scales = _base3(raw, st_meta, lins)
    else:
        values, scales = _bitnet_2bit(raw, st_meta, cfg, lins)
    graphdef, abs_state = nnx.split(abstract)
    model = nnx.merge(graphdef, fill_state(abs_state, {k: jnp.asarray(v) for k, v in values.items()}))
    for p, lin in linears(model).items():
        lin.frozen_scale = FrozenScale(jnp.asarray(scales[p]))
    return model, cfg


def load_model_dir(model_dir: str, **overrides):
    """(model, cfg); ``overrides`` change encoder-side options (dtype, attention, remat...)."""
    model_dir = os.path.abspath(model_dir)
    cfg, meta = read_config(model_dir)
    if meta.get("export"):  # an export folder: packed weights instead of orbax params
        return load_export(model_dir, **overrides)
    cfg = cfg.replace(**overrides) if overrides else cfg
    abstract = abstract_model(cfg)
    graphdef, abs_state = nnx.split(abstract)
    target = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in flat_params(abs_state).items()}
    values = ocp.StandardCheckpointer().restore(os.path.join(model_dir, PARAMS_DIR), target)
    return nnx.merge(graphdef, fill_state(abs_state, values)), cfg
