"""Export size per format for the real Qwen3-0.6B and Gemma3-270M shapes, vs the bf16 checkpoint.

    JAX_PLATFORMS=cpu python bench/export_size.py

The sizes come from ``bitembed_jax.export.model_card.export_sizes`` on an *abstract* model (shapes only,
``nnx.eval_shape``), so no 0.6B model is allocated; tests/test_export.py checks that this accounting equals
the bytes of the tensors the exporter writes. The models are the bitnet ``per_linear`` layout (the
released embedders'): per-linear RMSNorms are counted with the norms. Sizes are tensor bytes (the
safetensors header adds a few kB).
"""
from bitembed_jax.convert.hf_config import from_hf_config
from bitembed_jax.export.model_card import export_sizes
from bitembed_jax.io.model_dir import abstract_model
from bitembed_jax.models.presets import PRESETS
from bitembed_jax.choices import PRECISIONS
from bitembed_jax.quant.storage import bytes_per_vector

MODELS = {"Qwen3-0.6B": "Qwen/Qwen3-0.6B", "Gemma3-270M": "google/gemma-3-270m"}
VARIANTS = [  # (format, dtype of embeddings and norms, int8 token embeddings)
    ("bitnet-2bit", "float32", False),
    ("bitnet-2bit", "bfloat16", False),
    ("base3", "float32", False),
    ("base3", "bfloat16", False),
    ("base3", "bfloat16", True),
]


def mb(n: int) -> str:
    return f"{n / 1e6:,.1f}"


def main():
    print("| model | format | embeddings as | embeddings MB | ternary linears MB | scales kB | norms MB | total MB "
          "| vs bf16 original | bits/weight |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    dims, n_ternary = {}, {}
    for name, preset in MODELS.items():
        cfg = from_hf_config(dict(PRESETS[preset]), preset, mode="bitnet", norm="per_linear")
        model = abstract_model(cfg)
        dims[name] = cfg.hidden_size
        first = True
        for fmt, dtype, int8 in VARIANTS:
            s = export_sizes(model, cfg, fmt, dtype=dtype, int8_embeddings=int8)
            c = s["components"]
            if first:
                n_lin = n_ternary[name] = s["ternary_weights"]
                print(f"| {name} | bf16 original | bfloat16 | {mb(2 * cfg.vocab_size * cfg.hidden_size)} | "
                      f"{mb(2 * n_lin)} | | {mb(s['bf16_original'] - 2 * n_lin - 2 * cfg.vocab_size * cfg.hidden_size)}"
                      f" | {mb(s['bf16_original'])} | 100% | 16 |")
                first = False
            emb = "int8 + row scale" if int8 else dtype
            bits = 8 * c["ternary linears (packed)"] / s["ternary_weights"]
            print(f"| {name} | {fmt} | {emb} | {mb(c['token embeddings'])} | {mb(c['ternary linears (packed)'])} | "
                  f"{c['linear scales'] / 1e3:.2f} | {mb(c['norms and biases'])} | {mb(s['total'])} | "
                  f"{s['total'] / s['bf16_original']:.1%} | {bits:.3f} |")
    print()
    print("Ternary weights: " + ", ".join(f"{name} {n / 1e6:.1f} M" for name, n in n_ternary.items()))
    print()
    print("| output precision | " + " | ".join(f"bytes per vector, {n} (d={d})" for n, d in dims.items()) + " |")
    print("|---|" + "---:|" * len(dims))
    for p in PRECISIONS:
        print(f"| {p} | " + " | ".join(str(bytes_per_vector(p, d)) for d in dims.values()) + " |")


if __name__ == "__main__":
    main()
