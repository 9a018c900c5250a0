"""Export a trained BitNet encoder as packed ternary weights.

Two formats (``export(..., fmt=...)``):

``bitnet-2bit``
    The layout of transformers' BitNet integration (``transformers/integrations/bitnet.py``): every block
    linear as uint8 with 4 ternary values per byte along the output dim (value + 1 in bits 0-1 .. 6-7 of
    rows r, r+R, r+2R, r+3R, R = out/4), a ``weight_scale`` of shape (1,), the per-linear RMSNorm as
    ``<linear>.rms_norm.weight``, and ``quantization_config`` = {quant_method: bitnet, linear_class,
    quantization_mode: offline, use_rms_norm, rms_norm_eps} in the architecture's own HF ``config.json``
    (Qwen3Config / Gemma3TextConfig regenerated from our ModelConfig). ``AutoModel.from_pretrained(DIR)``
    and ``SentenceTransformer(DIR)`` load it with no remote code (``accelerate`` must be installed).

    transformers' offline ``BitLinear`` computes (int8(x) @ q^T) / (act_scale * weight_scale): it divides,
    so ``linear_class="bitlinear"`` (default: the weights stay packed in memory) stores weight_scale =
    1/gamma. ``AutoBitLinear`` (``linear_class="autobitlinear"``: unpacked to float once at load)
    multiplies, so it stores gamma. Either way the forward equals ours: RMSNorm, then the same per-token
    absmax int8 quantizer (127 / max|x| clamped at 1e-5, round, clamp to [-128, 127]), then the ternary
    matmul. The exact gammas also go into the safetensors metadata, so ``load_export`` reads this format
    back bit for bit too.

    Norm layouts: ``per_linear`` maps onto ``use_rms_norm: true`` and ``none`` onto ``use_rms_norm:
    false``. ``subln`` is refused: its extra RMSNorm in front of o_proj / down_proj has no place in
    transformers' Qwen3/Gemma3 modules (its BitLinear only knows a norm inside every linear). Train or
    convert with ``norm="per_linear"`` (the released BitNet embedders' layout) for a PyTorch export, or
    export SubLN models as ``base3`` for bitembed-jax. Also refused: 4-bit activations and per-row scales
    (transformers' BitLinear is 8-bit with one scale per linear), int8 token embeddings (transformers
    would read the codes as floats), and out_features not divisible by 4 (its packed buffer has out // 4
    rows).

``base3``
    Five ternary values per byte (3^5 = 243 <= 256: 1.6 bits per weight), every norm layout, plus each
    linear's float32 scale (tensor ``<kernel path>.scale``; per tensor or per output row) and the format
    version, layout and shapes in the safetensors metadata. For bitembed-jax: ``load_export`` /
    ``Encoder.from_pretrained`` give back a model whose embeddings equal the checkpoint's bit for bit.

Token embeddings and norms are written in ``dtype`` (float32 default, exact; bfloat16 halves them), or,
with ``int8_embeddings`` (base3 only), the token embeddings as int8 codes with a float32 scale per row
(value = code * row_scale, row_scale = max|row| / 127). The folder also holds ``bitembed_config.json`` (our
config + an ``export`` section), the tokenizer (made to append EOS for last-token pooling, see
``st_files``), the sentence-transformers files (bitnet-2bit) and a model card README.md with the size table.

The folder is written to a temporary sibling and renamed into place; a non-empty ``out_dir`` is only
replaced with ``overwrite=True``.
"""
import json
import os

import ml_dtypes
import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from bitembed_jax.choices import DEFAULT_MAX_LENGTH, DTYPES, EXPORT_FORMATS, LINEAR_CLASSES
from bitembed_jax.convert.hf_config import to_hf_config
from bitembed_jax.convert.name_maps import LINEAR, TRANSFORMS, expand
from bitembed_jax.export.model_card import export_sizes, model_card, tensor_sizes
from bitembed_jax.layers.bitlinear import linears
from bitembed_jax.quant.packing import int8_rows, pack_base3, pack_bitnet_2bit
from bitembed_jax.export.st_files import write_sentence_transformers, write_tokenizer
from bitembed_jax.io import paths
from bitembed_jax.io.model_dir import CONFIG_NAME, check_writable, read_config, resolve_model_dir
from bitembed_jax.io.load import load_model_dir
from bitembed_jax.io.state_paths import flat_params

NP_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}
WEIGHTS = "model.safetensors"
FORMAT_VERSION = 1


def refusal(cfg, fmt: str, *, int8_embeddings: bool = False) -> str | None:
    """Why ``cfg`` cannot be exported as ``fmt`` (None if it can)."""
    if cfg.mode != "bitnet":
        return ("this is an fp (full-precision) model: only bitnet models have ternary weights to pack; "
                "convert or train with mode=bitnet")
    if fmt != "bitnet-2bit":
        return None
    if cfg.norm == "subln":
        return ("norm='subln' cannot be expressed in transformers' BitNet integration: its BitLinear carries "
                "a norm inside every linear (use_rms_norm), but Qwen3/Gemma3 have no place for SubLN's extra "
                "RMSNorm in front of o_proj and down_proj. Export with --format base3 (read back exactly by "
                "bitembed-jax's load_export / Encoder), or train/convert with --norm per_linear (the layout "
                "of the released BitNet embedders) for a PyTorch export")
    if cfg.act_bits != 8:
        return (f"{cfg.act_bits}-bit activations: transformers' BitLinear quantizes activations to 8 bits only; "
                "export with --format base3")
    if cfg.per_row_scale:
        return "per-row weight scales: transformers' BitLinear has one weight_scale per linear; export as base3"
    if int8_embeddings:
        return ("--int8-embeddings: transformers' BitNet integration keeps float token embeddings and would read "
                "int8 codes as floats; use --dtype bfloat16 to halve them, or --format base3")
    return None


def _float(x, dtype: str) -> np.ndarray:
    return np.asarray(x, np.float32).astype(NP_DTYPES[dtype])


def bitnet_2bit_tensors(model, cfg, *, dtype: str = "float32", linear_class: str = "bitlinear"):
    """({HF tensor name: array}, {HF linear name: exact gamma}) in transformers' BitNet layout."""
    params = flat_params(nnx.state(model))
    lins = linears(model)
    out, gammas, used = {}, {}, set()
    for hf_name, ours, transform in expand(cfg.arch, cfg.num_layers, cfg.attention_bias):
        used.add(ours)
        if transform != LINEAR:
            out[hf_name] = _float(TRANSFORMS[transform](np.asarray(params[ours])), dtype)
            continue
        lin = lins[ours]
        q, gamma = lin.frozen()  # int8 (out, in), float32 ()
        q, gamma = np.asarray(q), np.float32(gamma)
        if q.shape[0] % 4:
            raise ValueError(f"{hf_name}: {q.shape[0]} output features is not a multiple of 4; transformers' "
                             "BitLinear holds out_features // 4 packed rows. Export with --format base3")
        base = hf_name[: -len(".weight")]
        out[hf_name] = pack_bitnet_2bit(q)
        ws = np.float32(1) / gamma if linear_class == "bitlinear" else gamma
        out[base + ".weight_scale"] = np.asarray([ws], np.float32)
        gammas[base] = float(gamma)
        if lin.norm is not None:
            out[base + ".rms_norm.weight"] = _float(lin.norm.weight[...], dtype)
            used.add(ours[: -len("kernel")] + "norm.weight")
    left = sorted(set(params) - used)
    if left:
        raise ValueError(f"internal: parameters with no place in the bitnet-2bit layout: {left[:5]}")
    return out, gammas


def base3_tensors(model, *, dtype: str = "float32", int8_embeddings: bool = False):
    """({name: array}, {kernel path: metadata}) for the base3 format (names are our dotted state paths)."""
    lins = linears(model)
    tensors, meta = {}, {}
    for path, value in flat_params(nnx.state(model)).items():
        if path in lins:
            q, gamma = lins[path].frozen()  # int8 (out, in); () or (out, 1)
            q = np.asarray(q)
            gamma = np.asarray(gamma, np.float32)
            tensors[path + ".base3"] = pack_base3(q)
            tensors[path + ".scale"] = gamma.reshape(-1)
            meta[path] = {"shape": list(q.shape), "per_row_scale": gamma.size > 1}
            if gamma.size == 1:
                meta[path]["scale"] = float(gamma)
        elif path == "embed_tokens.embedding" and int8_embeddings:
            codes, scale = int8_rows(value)
            tensors[path + ".int8"] = codes
            tensors[path + ".row_scale"] = scale
        else:
            tensors[path] = _float(value, dtype)
    return tensors, meta


def export(checkpoint_dir: str, out_dir: str, *, fmt: str = "bitnet-2bit", overwrite: bool = False,
           int8_embeddings: bool = False, dtype: str = "float32", linear_class: str = "bitlinear",
           int4_embeddings: bool = False, embedding_block: int | None = None,
           max_length: int | None = None, push_to_hub: str | None = None, private: bool = False, hub_client=None,
           log=print) -> str:
    """Write the bitnet model folder ``checkpoint_dir`` (or a training workdir's ``model/``) as ``fmt``.

    fmt: "bitnet-2bit" (PyTorch: transformers' BitNet integration, sentence-transformers) or "base3"
      (bitembed-jax, 1.6 bits per weight, any norm layout). See the module docstring for both layouts.
      "onnx" (fp or bitnet models, any layout; ``onnx_export``): ONNX Runtime / sentence-transformers' ONNX
      backend, ternary linears as integer matmuls.
    Refused for bitnet-2bit, with the reason: norm="subln" (transformers has no place for SubLN's o_proj /
      down_proj norms: use base3, or a per_linear model), 4-bit activations, per-row scales, int8
      embeddings, out_features not divisible by 4. fp models are refused for both formats.
    dtype: "float32" (exact) or "bfloat16", for token embeddings and norms.
    int8_embeddings: base3 (a float32 scale per row) and onnx (a float16 scale per block).
    int4_embeddings: onnx only; int4 token embeddings with a float16 scale per block.
    embedding_block: onnx only; values per scale of int8 / int4 token embeddings (default 32; the hidden size
      for one scale per row).
    linear_class: "bitlinear" (weight_scale = 1/gamma, weights stay packed in PyTorch memory) or
      "autobitlinear" (weight_scale = gamma, unpacked at load).
    max_length: sentence-transformers' max_seq_length (default: the folder's ``max_length`` or DEFAULT_MAX_LENGTH).
    push_to_hub: "ORG/NAME" to upload the folder afterwards (``hub.push_to_hub``; the token comes from
      HF_TOKEN or ``hf auth login`` and is never read, printed or written here); ``hub_client`` replaces
      ``huggingface_hub.HfApi()`` (tests).
    Returns the absolute path of the written folder.
    """
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"--format {fmt!r} is not one of {', '.join(EXPORT_FORMATS)}")
    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if linear_class not in LINEAR_CLASSES:
        raise ValueError(f"--linear-class {linear_class!r} is not one of {', '.join(LINEAR_CLASSES)}")
    if push_to_hub is not None:
        from bitembed_jax.export.hub import check_hub_access, check_repo_id
        check_repo_id(push_to_hub)
        if hub_client is None:  # the real hub: offline or without a token, the push would fail after packing
            check_hub_access()
    given, checkpoint_dir = checkpoint_dir, resolve_model_dir(checkpoint_dir)
    out_dir = os.path.abspath(out_dir)
    paths.check_apart("--out", out_dir, [("--checkpoint", given, checkpoint_dir)], "export to another folder")
    check_writable(out_dir, overwrite)
    cfg, meta = read_config(checkpoint_dir)
    if fmt == "onnx":  # fp or bitnet, any layout: the graph computes the model as it is
        from bitembed_jax.export.onnx_export import EMBEDDING_BLOCK, write_onnx_export
        write_onnx_export(checkpoint_dir, out_dir, cfg, meta, max_length=max_length, dtype=dtype,
                          int8_embeddings=int8_embeddings, int4_embeddings=int4_embeddings,
                          embedding_block=EMBEDDING_BLOCK if embedding_block is None else embedding_block)
        return _push(out_dir, push_to_hub, private, hub_client, log)
    if int4_embeddings:
        raise ValueError(f"--int4-embeddings is an option of --format onnx, not {fmt}")
    if embedding_block is not None:
        raise ValueError(f"--embedding-block is an option of --format onnx, not {fmt}")
    why = refusal(cfg, fmt, int8_embeddings=int8_embeddings)
    if why:
        raise ValueError(f"cannot export {checkpoint_dir} as {fmt}: {why}")
    max_length = int(max_length or meta.get("max_length") or DEFAULT_MAX_LENGTH)
    model, _ = load_model_dir(checkpoint_dir)

    with paths.atomic_dir(out_dir) as tmp:
        info = {"format": fmt, "version": FORMAT_VERSION, "dtype": dtype, "int8_embeddings": int8_embeddings}
        if fmt == "bitnet-2bit":
            info["linear_class"] = linear_class
            tensors, gammas = bitnet_2bit_tensors(model, cfg, dtype=dtype, linear_class=linear_class)
            qc = {"quant_method": "bitnet", "linear_class": linear_class, "quantization_mode": "offline",
                  "use_rms_norm": cfg.norm == "per_linear", "rms_norm_eps": cfg.rms_norm_eps}
            with open(os.path.join(tmp, "config.json"), "w") as f:
                json.dump(to_hf_config(cfg, qc, dtype), f, indent=2)
            st_meta = {"format": "pt", "bitembed_format": fmt, "bitembed_version": str(FORMAT_VERSION),
                       "gamma": json.dumps(gammas)}
        else:
            tensors, lin_meta = base3_tensors(model, dtype=dtype, int8_embeddings=int8_embeddings)
            st_meta = {"format": "bitembed-base3", "version": str(FORMAT_VERSION),
                       "layout": "q in {-1,0,1} of each (out, in) kernel, row-major, byte = sum_i (q_i + 1) * 3**i "
                                 "over 5 consecutive values; weight = q * scale",
                       "linears": json.dumps(lin_meta),
                       "embeddings": ("int8 codes * row_scale[:, None]" if int8_embeddings else dtype)}
        save_file(tensors, os.path.join(tmp, WEIGHTS), metadata=st_meta)

        export_meta = {k: v for k, v in meta.items() if k != "source"}  # local paths stay local
        export_meta["export"] = info
        export_meta["max_length"] = max_length
        with open(os.path.join(tmp, CONFIG_NAME), "w") as f:
            json.dump(export_meta, f, indent=2, sort_keys=True)
        write_tokenizer(checkpoint_dir, tmp, append_eos=cfg.pooling == "last", max_length=max_length)
        if fmt == "bitnet-2bit":
            write_sentence_transformers(tmp, hidden_size=cfg.hidden_size, pooling=cfg.pooling,
                                        prompts=meta.get("prompts") or {}, max_length=max_length)
        sizes = export_sizes(model, cfg, fmt, dtype=dtype, int8_embeddings=int8_embeddings)
        if tensor_sizes(tensors) != sizes["components"]:
            raise RuntimeError(f"internal: size accounting {sizes['components']} != written {tensor_sizes(tensors)}")
        with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as f:
            f.write(model_card(cfg, meta, fmt, sizes, linear_class=linear_class))
    return _push(out_dir, push_to_hub, private, hub_client, log)


def _push(out_dir: str, push_to_hub: str | None, private: bool, hub_client, log) -> str:
    if push_to_hub is not None:
        from bitembed_jax.export.hub import push_to_hub as push
        push(out_dir, push_to_hub, private=private, client=hub_client, log=log)
    return out_dir
