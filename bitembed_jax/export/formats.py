"""Export a trained BitNet encoder: packed ternary weights in a folder PyTorch (or our JAX loader) reads.

``bitnet-2bit``: transformers' BitNet integration layout (uint8, 4 trits per byte, ``weight_scale`` =
1/gamma because its offline ``BitLinear`` divides, per-linear norms as ``<linear>.rms_norm.weight``) with the
matching ``quantization_config``, so ``AutoModel.from_pretrained(DIR)`` loads it with no remote code. It
needs the ``per_linear`` norm layout: transformers cannot express SubLN's extra o/down norms.
``base3``: 5 trits per byte (1.6 bits per weight) plus each layer's float32 scale, for every norm layout;
``load_export`` reads it back into our model.
Embeddings and norms stay float32. Written to a temporary folder, then renamed into place.
"""
import json
import os
import shutil
import tempfile

import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from bitembed_jax.convert.name_maps import LINEAR, expand
from bitembed_jax.export.packing import pack_base3, pack_bitnet_2bit
from bitembed_jax.io.model_dir import CONFIG_NAME, TOKENIZER_FILES, check_writable, load_model_dir, read_config
from bitembed_jax.io.state_paths import flat_params
from bitembed_jax.layers.bitlinear import BitLinear
from bitembed_jax.quant.ternary import ternary_int

FORMATS = ("bitnet-2bit", "base3")
WEIGHTS = "model.safetensors"


def _linears(model) -> dict:
    """{dotted path of the kernel: BitLinear}."""
    return {".".join(map(str, path)) + ".kernel": node for path, node in nnx.iter_graph(model)
            if isinstance(node, BitLinear)}


def hf_config(cfg, quantization_config: dict) -> dict:
    """The architecture's HF config.json regenerated from our ModelConfig."""
    if cfg.arch == "qwen3":
        from transformers import Qwen3Config as C
        extra = dict(rope_theta=cfg.rope_theta, tie_word_embeddings=True,
                     use_sliding_window=cfg.sliding_window is not None, sliding_window=cfg.sliding_window)
    else:
        from transformers import Gemma3TextConfig as C
        bidir = cfg.attention == "bidirectional"
        extra = dict(layer_types=list(cfg.layer_types), query_pre_attn_scalar=cfg.query_pre_attn_scalar,
                     sliding_window=(cfg.sliding_window - 1) * 2 if bidir else cfg.sliding_window,
                     use_bidirectional_attention=bidir,
                     rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": cfg.rope_theta},
                                      "sliding_attention": {"rope_type": "default",
                                                            "rope_theta": cfg.rope_local_theta}})
    c = C(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
          num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
          head_dim=cfg.head_dim, rms_norm_eps=cfg.rms_norm_eps, attention_bias=cfg.attention_bias,
          pad_token_id=cfg.pad_token_id, eos_token_id=cfg.eos_token_id, **extra)
    d = c.to_dict()
    d["quantization_config"] = quantization_config
    return d


def _bitnet_2bit_tensors(model, cfg) -> dict:
    params = flat_params(nnx.state(model))
    linears = _linears(model)
    out = {}
    for hf_name, ours, transform in expand(cfg.arch, cfg.num_layers, cfg.attention_bias):
        if transform == LINEAR:
            q, gamma = ternary_int(params[ours])
            out[hf_name] = pack_bitnet_2bit(np.asarray(q).T)
            base = hf_name[: -len(".weight")]
            out[base + ".weight_scale"] = np.asarray([1.0 / float(gamma)], np.float32)
            out[base + ".rms_norm.weight"] = np.asarray(linears[ours].norm.weight[...], np.float32)
        else:
            out[hf_name] = np.asarray(params[ours], np.float32)
    return out


def _base3_tensors(model) -> tuple[dict, dict]:
    tensors, shapes = {}, {}
    linears = _linears(model)
    for path, value in flat_params(nnx.state(model)).items():
        if path in linears:
            q, gamma = ternary_int(value)
            tensors[path + ".base3"] = pack_base3(np.asarray(q))
            tensors[path + ".scale"] = np.asarray(gamma, np.float32).reshape(-1)
            shapes[path] = list(value.shape)
        else:
            tensors[path] = np.asarray(value, np.float32)
    return tensors, shapes


def size_table(tensors: dict, num_ternary: int, bf16_bytes: int) -> str:
    ternary = sum(v.nbytes for k, v in tensors.items() if v.dtype == np.uint8)
    rest = sum(v.nbytes for k, v in tensors.items() if v.dtype != np.uint8)
    total = ternary + rest
    return "\n".join([
        "| component | bytes |", "|---|---:|",
        f"| packed ternary linears ({num_ternary:,} weights) | {ternary:,} |",
        f"| float32 embeddings, norms, scales | {rest:,} |",
        f"| total | {total:,} |",
        f"| bf16 original | {bf16_bytes:,} |",
        "", f"Bits per ternary weight: {8 * ternary / max(num_ternary, 1):.3f}; total is "
        f"{total / bf16_bytes:.2%} of the bf16 checkpoint.",
    ])


def model_card(cfg, meta: dict, fmt: str, sizes: str) -> str:
    from bitembed_jax.quant.embedding import PRECISIONS, bytes_per_vector

    trained = meta.get("precisions", ["fp32"])
    dims = [d or cfg.hidden_size for d in meta.get("matryoshka_dims", [0])]
    rows = "\n".join(f"| {p} | {', '.join(str(bytes_per_vector(p, d)) for d in dims)} | "
                     f"{'yes' if p in trained else 'no'} |" for p in PRECISIONS)
    prompt = meta.get("prompts", {}).get("query", "")
    return (f"# BitNet text embedder ({cfg.arch}, {fmt})\n\nExported by bitembed-jax: ternary weights in every "
            f"linear of the blocks, {cfg.act_bits}-bit activations, norm layout `{cfg.norm}`, {cfg.pooling}-token "
            f"pooling + L2 normalisation.\n\nQuery prompt: `{prompt!r}`; documents get none.\n\n## Sizes\n\n{sizes}\n\n"
            f"## Output vectors\n\n| precision | bytes per vector at dims {', '.join(map(str, dims))} | trained for |\n"
            f"|---|---|---|\n{rows}\n")


def export(checkpoint: str, out_dir: str, *, fmt: str = "bitnet-2bit", overwrite: bool = False) -> str:
    """Write ``checkpoint`` (a model folder or a training workdir) as ``fmt`` into ``out_dir``."""
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r} is not one of {FORMATS}")
    if os.path.exists(os.path.join(checkpoint, "model", CONFIG_NAME)):
        checkpoint = os.path.join(checkpoint, "model")
    check_writable(out_dir, overwrite)
    cfg, meta = read_config(checkpoint)
    if cfg.mode != "bitnet":
        raise ValueError(f"{checkpoint} holds an fp model; only bitnet models have ternary weights to export")
    if fmt == "bitnet-2bit" and cfg.norm != "per_linear":
        raise ValueError(f"{checkpoint} uses norm={cfg.norm!r}: transformers' BitNet layers only carry a norm inside "
                         "every linear (per_linear), not SubLN's extra o_proj/down_proj norms. Export with "
                         "--format base3 (read back by bitembed-jax) or train with --norm per_linear.")
    if cfg.act_bits != 8 and fmt == "bitnet-2bit":
        raise ValueError(f"{checkpoint} uses {cfg.act_bits}-bit activations; transformers' BitLinear is 8-bit only")
    model, _ = load_model_dir(checkpoint)
    n_ternary = sum(int(np.prod(lin.kernel.shape)) for lin in _linears(model).values())
    n_total = sum(int(np.prod(v.shape)) for v in flat_params(nnx.state(model)).values())
    out_dir = os.path.abspath(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(out_dir) + "-", dir=parent)
    try:
        if fmt == "bitnet-2bit":
            tensors = _bitnet_2bit_tensors(model, cfg)
            qc = {"quant_method": "bitnet", "linear_class": "bitlinear", "quantization_mode": "offline",
                  "use_rms_norm": True, "rms_norm_eps": cfg.rms_norm_eps}
            with open(os.path.join(tmp, "config.json"), "w") as f:
                json.dump(hf_config(cfg, qc), f, indent=2)
            save_file(tensors, os.path.join(tmp, WEIGHTS), metadata={"format": "pt"})
        else:
            tensors, shapes = _base3_tensors(model)
            save_file(tensors, os.path.join(tmp, WEIGHTS),
                      metadata={"format": "bitembed-base3", "version": "1", "shapes": json.dumps(shapes)})
        with open(os.path.join(tmp, CONFIG_NAME), "w") as f:
            json.dump({**meta, "export": {"format": fmt}}, f, indent=2, sort_keys=True)
        for name in TOKENIZER_FILES:
            if os.path.exists(os.path.join(checkpoint, name)):
                shutil.copy2(os.path.join(checkpoint, name), os.path.join(tmp, name))
        with open(os.path.join(tmp, "README.md"), "w") as f:
            f.write(model_card(cfg, meta, fmt, size_table(tensors, n_ternary, 2 * n_total)))
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
