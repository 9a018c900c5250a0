"""Export sizes (from shapes alone, so 0.6B-scale numbers need no weights) and the model card README.md."""
import math

import numpy as np
from flax import nnx

from bitembed_jax.choices import PRECISIONS
from bitembed_jax.convert.name_maps import expand
from bitembed_jax.io.state_paths import flat_params
from bitembed_jax.layers.bitlinear import linears
from bitembed_jax.quant.storage import bytes_per_vector

COMPONENTS = ("token embeddings", "ternary linears (packed)", "linear scales", "norms and biases")
FLOAT_BYTES = {"float32": 4, "bfloat16": 2}


def export_sizes(model, cfg, fmt: str, *, dtype: str = "float32", int8_embeddings: bool = False) -> dict:
    """Bytes per component of the tensors an export writes, computed from the model's shapes.

    ``model`` may be abstract (``io.model_dir.abstract_model(cfg)``). The bf16 original is the
    architecture's own tensors (token embeddings, linears, its norms) at 2 bytes each: what the source
    checkpoint weighs in bf16, without the norms BitNet inserts.
    """
    shapes = {k: tuple(v.shape) for k, v in flat_params(nnx.state(model)).items()}
    lin = linears(model)
    fb = FLOAT_BYTES[dtype]
    sizes = dict.fromkeys(COMPONENTS, 0)
    n_ternary = 0
    for path, shape in shapes.items():
        n = math.prod(shape)
        if path in lin:
            din, dout = shape
            n_ternary += n
            sizes["ternary linears (packed)"] += -(-dout // 4) * din if fmt == "bitnet-2bit" else -(-n // 5)
            sizes["linear scales"] += 4 * (dout if lin[path].per_row_scale else 1)
        elif path.startswith("embed_tokens."):
            sizes["token embeddings"] += n + 4 * shape[0] if int8_embeddings else fb * n
        else:
            sizes["norms and biases"] += fb * n
    original = 2 * sum(math.prod(shapes[ours]) for _, ours, _ in expand(cfg.arch, cfg.num_layers, cfg.attention_bias))
    return {"components": sizes, "total": sum(sizes.values()), "ternary_weights": n_ternary,
            "bf16_original": original, "format": fmt, "dtype": dtype, "int8_embeddings": int8_embeddings}


def component_of(name: str, array: np.ndarray) -> str:
    """The size-table component of a tensor an export writes (either format's names)."""
    if "embed_tokens" in name:
        return "token embeddings"
    if name.endswith((".base3",)) or array.dtype == np.uint8:
        return "ternary linears (packed)"
    if name.endswith((".scale", ".weight_scale")):
        return "linear scales"
    return "norms and biases"


def tensor_sizes(tensors: dict) -> dict:
    sizes = dict.fromkeys(COMPONENTS, 0)
    for k, v in tensors.items():
        sizes[component_of(k, v)] += v.nbytes
    return sizes


def _bytes(n: int) -> str:
    return f"{n:,} ({n / 1e6:,.2f} MB)" if n >= 1e5 else f"{n:,}"


def size_table(s: dict) -> str:
    c, total, n = s["components"], s["total"], max(s["ternary_weights"], 1)
    emb_note = "int8 + float32 row scale" if s["int8_embeddings"] else s["dtype"]
    rows = [("token embeddings", f"{emb_note}"), ("ternary linears (packed)", f"{s['ternary_weights']:,} weights"),
            ("linear scales", "float32"), ("norms and biases", s["dtype"])]
    lines = ["| component | stored as | bytes |", "|---|---|---:|"]
    lines += [f"| {name} | {how} | {_bytes(c[name])} |" for name, how in rows]
    lines += [f"| **total** | {s['format']} | {_bytes(total)} |",
              f"| bf16 original | bfloat16 | {_bytes(s['bf16_original'])} |"]
    bits = 8 * c["ternary linears (packed)"] / n
    bits_scales = 8 * (c["ternary linears (packed)"] + c["linear scales"]) / n
    lines += ["", f"Bits per ternary weight: {bits:.3f} ({bits_scales:.3f} with the scales; the information limit "
                  f"is log2(3) = 1.585). The export is {total / s['bf16_original']:.1%} of the bf16 original; its "
                  f"linears are {(c['ternary linears (packed)'] + c['linear scales']) / (2 * n):.1%} of theirs."]
    return "\n".join(lines)


def vector_table(cfg, meta: dict) -> str:
    trained = set(meta.get("precisions") or ["fp32"])
    dims = sorted({int(d) or cfg.hidden_size for d in (meta.get("matryoshka_dims") or [0])}, reverse=True)
    head = "| precision | " + " | ".join(f"bytes at dim {d}" for d in dims) + " | trained for |"
    lines = [head, "|---|" + "---:|" * len(dims) + "---|"]
    for p in PRECISIONS:
        lines.append(f"| {p} | " + " | ".join(str(bytes_per_vector(p, d)) for d in dims)
                     + f" | {'yes' if p in trained else 'no'} |")
    return "\n".join(lines)


def _usage(cfg, fmt: str, prompt: str) -> str:
    q = f'prompt={prompt!r}' if prompt else ""
    jax_part = ("```python\nfrom bitembed_jax import Encoder\n\nenc = Encoder.from_pretrained(\"PATH\")\n"
                f"q = enc.encode([\"how do I ...\"]{', ' + q if q else ''})\nd = enc.encode([\"a document\"])\n```\n")
    if fmt == "base3":
        return ("This folder is read by bitembed-jax (`Encoder.from_pretrained`), which unpacks the base-3 "
                "weights and keeps their exact scales:\n\n" + jax_part)
    st_q = ', prompt_name="query"' if prompt else ""
    return ("PyTorch, no remote code (transformers' BitNet integration; needs `accelerate`):\n\n"
            "```python\nfrom sentence_transformers import SentenceTransformer\n\n"
            f"model = SentenceTransformer(\"PATH\")\nq = model.encode([\"how do I ...\"]{st_q})\n"
            "d = model.encode([\"a document\"])\n```\n\n"
            "or `transformers.AutoModel.from_pretrained(\"PATH\")` + "
            f"{'last-token' if cfg.pooling == 'last' else 'mean'} pooling + L2 normalisation "
            f"{'(the tokenizer appends EOS, the token pooled)' if cfg.pooling == 'last' else ''}.\n\n"
            "JAX (bitembed-jax):\n\n" + jax_part)


def model_card(cfg, meta: dict, fmt: str, sizes: dict, *, linear_class: str | None = None) -> str:
    prompt = (meta.get("prompts") or {}).get("query", "")
    if fmt == "bitnet-2bit":
        layout = (f"transformers' BitNet layout: uint8 with 4 ternary values per byte along the output dim, a "
                  f"`weight_scale` per linear (`linear_class={linear_class}`), and the per-linear RMSNorms as "
                  "`<linear>.rms_norm.weight`.")
    else:
        layout = ("base-3: 5 ternary values per byte (1.6 bits per weight), each linear with its float32 absmean "
                  "scale; shapes and scales in the safetensors metadata.")
    norm = {"per_linear": "an RMSNorm inside every linear (before the int8 activation quantizer)",
            "subln": "SubLN: an extra RMSNorm in front of o_proj and down_proj", "none": "no inserted norms"}[cfg.norm]
    library = "library_name: sentence-transformers\n" if fmt == "bitnet-2bit" else ""
    tags = "".join(f"- {t}\n" for t in (["sentence-transformers"] if fmt == "bitnet-2bit" else [])
                   + ["feature-extraction", "bitnet", "ternary", "bitembed-jax"])
    pooling = "last-token (EOS appended)" if cfg.pooling == "last" else "mean"
    emb = "int8 with a float32 scale per row" if sizes["int8_embeddings"] else sizes["dtype"]
    return f"""---
{library}tags:
{tags}---

# BitNet text embedder ({cfg.arch}, {fmt})

Exported by bitembed-jax: {cfg.num_layers} layers, hidden size {cfg.hidden_size}, ternary {{-1, 0, 1}} weights
in every linear of the blocks, {cfg.act_bits}-bit per-token activations, {norm}; {cfg.attention} attention,
{pooling} pooling and L2 normalisation. Token embeddings ({emb}) and norms ({sizes['dtype']}) are not ternary.

Weights: {layout}

Query prompt: {f"`{prompt!r}`" if prompt else "none"}; documents get none.

## Usage

{_usage(cfg, fmt, prompt)}
## Size

{size_table(sizes)}

## Output vectors

Bytes per stored vector (int formats carry one float32 scale per vector):

{vector_table(cfg, meta)}
"""
