"""Export size per format for the real Qwen3-0.6B and Gemma3-270M shapes, vs the bf16 checkpoint.

    python bench/export_size.py

Sizes are computed from the shapes (what the exporter writes: packed ternary linears, float32 scales,
norms and token embeddings), so no 0.6B model is allocated. The last column is the bitnet-2bit size if the
token embeddings were stored in bf16 (not an exporter option yet).
"""
from bitembed_jax.convert.hf_import import model_config_from_hf
from bitembed_jax.models.presets import PRESETS
from bitembed_jax.quant.embedding import bytes_per_vector


def sizes(cfg):
    e, m, h, kv, d = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    linears = [(e, h * d), (e, kv * d), (e, kv * d), (h * d, e), (e, m), (e, m), (m, e)]
    n_lin = cfg.num_layers * len(linears)
    ternary = cfg.num_layers * sum(a * b for a, b in linears)
    # per-linear input norms + the block norms (Gemma3 has 4 per layer, Qwen3 2) + q/k norms + final norm
    block_norms = (4 if cfg.arch == "gemma3" else 2) * e
    norms = cfg.num_layers * (sum(a for a, _ in linears) + block_norms + 2 * d) + e
    embed = cfg.vocab_size * e
    return ternary, n_lin, norms, embed


def main():
    print("| model | ternary weights | bf16 checkpoint MB | bitnet-2bit MB | base3 MB | bits/weight 2bit / base3 "
          "| linears 2bit / base3 MB | embeddings fp32 MB | 2bit with bf16 embeddings MB |")
    print("|---|---:|---:|---:|---:|---|---:|---:|---:|")
    for name in ("Qwen/Qwen3-0.6B", "google/gemma-3-270m"):
        cfg = model_config_from_hf(dict(PRESETS[name]), name, mode="bitnet")
        ternary, n_lin, norms, embed = sizes(cfg)
        bf16 = 2 * (ternary + norms + embed)
        two_bit = ternary // 4 + 4 * n_lin  # 4 trits per byte (rows padded to 4 are negligible) + scales
        base3 = -(-ternary // 5) + 4 * n_lin
        rest = 4 * norms + 4 * embed
        mb = 1e6
        print(f"| {name} | {ternary / 1e6:.1f} M | {bf16 / mb:.1f} | {(two_bit + rest) / mb:.1f} | "
              f"{(base3 + rest) / mb:.1f} | {8 * two_bit / ternary:.3f} / {8 * base3 / ternary:.3f} | "
              f"{two_bit / mb:.1f} / {base3 / mb:.1f} | {4 * embed / mb:.1f} | "
              f"{(two_bit + 4 * norms + 2 * embed) / mb:.1f} |")
    print()
    print("| output precision | bytes per 1024-d vector | per 640-d vector |")
    print("|---|---:|---:|")
    for p in ("fp32", "int8", "int4", "int2", "binary"):
        print(f"| {p} | {bytes_per_vector(p, 1024)} | {bytes_per_vector(p, 640)} |")


if __name__ == "__main__":
    main()
