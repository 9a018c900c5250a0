"""One whole ternary linear of the ONNX export, as ONNX Runtime runs it against the fused kernel of
``bench/ternary_gemm.c``: float32 tokens in, float32 out, per-token activation quantization included.

    python bench/ternary_linear_probe.py                                   # Gemma3's up_proj on 4096 tokens
    python bench/ternary_linear_probe.py --tokens 128 --threads 1          # batch 1 x 128 tokens

The ONNX side is the export's own nodes for one linear (``export.onnx_ops.ternary_matmul``: the per-linear
norm's multiply, ReduceMax / ReduceMin, QuantizeLinear and MatMulIntegerToFloat), run by ONNX Runtime; the
kernel side does the same arithmetic in two passes (codes, then the integer product with its rescaling).
Both get the same tokens (normal, with a few large channels, as LLM activations have) and ternary weights.
The script prints the largest difference between their outputs (codes may differ where a value lies within
an ulp of a rounding boundary) and their times, calls alternating. It measures what a custom operator would
replace; the rest of the graph (attention, norms, embeddings) is not in it.
"""
import argparse

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from bitembed_jax.export.onnx_graph import IR_VERSION, OPSET
from bitembed_jax.export.onnx_ops import MS_DOMAIN, Graph, ternary_matmul
from bitembed_jax.quant.activation import EPS as ACT_EPS
from onnx_matmul_probe import TernaryKernel, alternating_times, cpu_flags

NORM_EPS = 1e-6


def onnx_linear(lin: dict, k: int, n: int, bits: int, threads: int) -> ort.InferenceSession:
    g = Graph()
    y = ternary_matmul(g, "x", lin, bits, ACT_EPS, NORM_EPS, "linear")
    g.nodes.append(helper.make_node("Identity", [y], ["y"]))
    graph = helper.make_graph(g.nodes, "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])], g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)])
    model.ir_version = IR_VERSION
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def tokens(rng, m: int, k: int) -> np.ndarray:
    """Normal activations with 1% of the channels 20x larger."""
    scale = np.where(rng.random(k) < 0.01, 20.0, 1.0).astype(np.float32)
    return rng.standard_normal((m, k)).astype(np.float32) * scale


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--in-features", type=int, default=640)
    p.add_argument("--out-features", type=int, default=2048)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--act-bits", type=int, default=8, choices=(8, 4))
    p.add_argument("--no-norm", action="store_true", help="a linear without its own norm (SubLN's q/k/v)")
    p.add_argument("--reps", type=int, default=7)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    k, n = args.in_features, args.out_features
    codes = rng.integers(-1, 2, (k, n)).astype(np.int8)
    gamma = np.float32(0.02)
    norm = None if args.no_norm else (1.0 + 0.1 * rng.standard_normal(k)).astype(np.float32)
    lin = {"codes": codes, "gamma": gamma, "norm": norm}
    x = tokens(rng, args.tokens, k)
    sess = onnx_linear(lin, k, n, args.act_bits, args.threads)
    kernel = TernaryKernel(codes, args.threads)
    try:
        runs = {"ONNX Runtime (the export's nodes)": lambda: sess.run(None, {"x": x})[0],
                "fused kernel (bench/ternary_gemm.c)": lambda: kernel.linear(
                    x, norm, np.array([gamma]), norm_eps=NORM_EPS, eps=ACT_EPS, bits=args.act_bits)}
        ref, ours = (fn() for fn in runs.values())
        times = alternating_times(runs, args.reps)
    finally:
        kernel.close()
    step = np.abs(ref).max() / 127
    print(f"CPU flags: {cpu_flags()}; {args.threads} threads; {args.tokens} tokens x {k} -> {n}, "
          f"act_bits {args.act_bits}, {'no norm' if norm is None else 'per-linear norm'}")
    print(f"largest |difference| {np.abs(ours - ref).max():.3g} (the output's largest value / 127: {step:.3g})")
    for name, ts in times.items():
        print(f"{name}: best {1e3 * min(ts):.1f} ms, median {1e3 * float(np.median(ts)):.1f} ms")
    o, f = times.values()
    print(f"fused kernel / ONNX Runtime speed-up: best {min(o) / min(f):.2f}x, median {np.median(o) / np.median(f):.2f}x")


if __name__ == "__main__":
    main()
