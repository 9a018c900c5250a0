"""Where BitNet conversion loses a trained embedder, one factor at a time, before any training.

    python bench/conversion_damage.py --model runs/quality/teacher/model --pairs 400

Takes a full-precision model folder (e.g. the Gemma3-270M teacher of bench/quality_gemma3_270m.py) and
re-runs its forward with each factor of the BitNet conversion switched on alone and together: the inserted
per-linear RMSNorms (weight 1, as the conversion starts them, or set to each input's mean RMS measured on
the same sentences), per-token int8 absmax activations, and ternary absmean weights (per tensor, per output
row). Reports, on the first ``--pairs`` STS-B test pairs: the mean cosine between the variant's pooled vector
and the teacher's, and the variant's STS-B Spearman. For the diagnosis only, every linear layer's forward is
replaced by its fake-quantized float formula (the library's quantizers, float32), so each factor can be
switched on without the others.
"""
import argparse
import os
import sys

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
STSB = os.path.join(ROOT, "..", "shared", "data", "stsb", "sts.tsv")
VARIANTS = [  # name, factors
    ("teacher (fp)", {}),
    ("+ inserted norms, weight 1", dict(norm="one")),
    ("+ inserted norms, calibrated", dict(norm="calib")),
    ("int8 activations only", dict(act=8)),
    ("ternary weights only (per tensor)", dict(w="tensor")),
    ("ternary weights only (per row)", dict(w="row")),
    ("BitNet: norms 1 + int8 + ternary/tensor", dict(norm="one", act=8, w="tensor")),
    ("BitNet: calibrated norms + int8 + ternary/tensor", dict(norm="calib", act=8, w="tensor")),
    ("BitNet: calibrated norms + int8 + ternary/row", dict(norm="calib", act=8, w="row")),
]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="a full-precision bitembed-jax model folder")
    p.add_argument("--pairs", type=int, default=400)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args(argv)
    sys.path.insert(0, ROOT)
    import jax
    import jax.numpy as jnp
    from scipy.stats import spearmanr
    from transformers import AutoTokenizer

    from bitembed_jax.eval.local import read_sts
    from bitembed_jax.io.load import load_model_dir
    from bitembed_jax.layers.bitlinear import BitLinear
    from bitembed_jax.models import pool
    from bitembed_jax.quant.activation import absmax_quantize
    from bitembed_jax.quant.ternary import ternary_quantize

    model, cfg = load_model_dir(args.model)
    if cfg.mode != "fp":
        raise SystemExit(f"--model {args.model}: a {cfg.mode!r} model; this diagnosis starts from an fp one")
    sts = read_sts(STSB, limit=args.pairs)
    texts = list(sts.s1) + list(sts.s2)
    tok = AutoTokenizer.from_pretrained(args.model)
    batches = []
    for i in range(0, len(texts), args.batch_size):
        b = tok(texts[i:i + args.batch_size], padding="max_length", truncation=True, max_length=args.max_length,
                return_tensors="np")
        batches.append((jnp.asarray(b["input_ids"]), jnp.asarray(b["attention_mask"])))

    factors, calib = {}, {}

    def linear(self, x):
        w = self.kernel[...]
        xf = x.astype(jnp.float32)
        if factors.get("record") is not None:
            rms = jnp.sqrt(jnp.mean(xf * xf, -1))
            m = factors["record"].astype(bool)
            calib.setdefault(id(self), []).append(float(jnp.sum(jnp.where(m, rms, 0)) / jnp.sum(m)))
        if factors.get("norm"):
            scale = np.mean(calib[id(self)]) if factors["norm"] == "calib" else 1.0
            xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, -1, keepdims=True) + 1e-6) * scale
        if factors.get("act"):
            xf = absmax_quantize(xf, factors["act"])
        if factors.get("w"):
            w = ternary_quantize(w, per_row=factors["w"] == "row")
        return jnp.dot(xf, w.astype(jnp.float32), preferred_element_type=jnp.float32)

    BitLinear.__call__ = linear

    def embed_all():
        fwd = jax.jit(lambda ids, mask: pool(model(ids, mask).last_hidden_state, mask, cfg.pooling))
        return np.concatenate([np.asarray(fwd(ids, mask)) for ids, mask in batches])

    for ids, mask in batches:  # calibration pass (eager: it records python floats)
        factors["record"] = mask
        model(ids, mask)
    factors.clear()
    rows, ref = [], None
    for name, f in VARIANTS:
        factors.clear()
        factors.update(f)
        e = embed_all()
        ref = e if ref is None else ref
        n = len(sts.s1)
        rho = spearmanr(np.sum(e[:n] * e[n:], -1), sts.scores).correlation
        rows.append((name, float(np.mean(np.sum(e * ref, -1))), float(rho)))
        print(f"{name:50s} cos {rows[-1][1]:.3f}  STS-B {rho:.3f}", file=sys.stderr, flush=True)
    print(f"{args.model}: first {len(sts.s1)} STS-B test pairs, inputs cut at {args.max_length} tokens, no training\n")
    print("| forward | cos to teacher | STS-B Spearman |\n|---|---:|---:|")
    for name, cos, rho in rows:
        print(f"| {name} | {cos:.3f} | {rho:.3f} |")


if __name__ == "__main__":
    main()
