"""The ceiling of the ONNX export's speed-up on this CPU: one linear alone, float32 ``MatMul`` against the
uint8 x int8 ``MatMulInteger`` the ternary graph runs (ternary int8 weights, uint8 activation codes with zero
point 128), alternating calls in one process.

    python bench/onnx_matmul_probe.py                   # 1024 x 3072 on 4096 tokens (the issue's probe), 2 threads

No whole ternary graph can be faster than the fp32 one by more than this ratio: the integer matmuls are most
of its time. MLAS runs the integer product with VNNI's vpdpbusd where the CPU has it (AVX512-VNNI or
AVX-VNNI) and with AVX2's vpmaddubsw otherwise; the script prints which flags the CPU reports.
"""
import argparse
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

PAUSE_S = 0.3  # the other session's ORT threads spin for a while after its call


def session(kind: str, k: int, n: int, threads: int, rng) -> ort.InferenceSession:
    if kind == "fp32":
        inits = [numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "w")]
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
        types = TensorProto.FLOAT, TensorProto.FLOAT
    else:
        inits = [numpy_helper.from_array(rng.integers(-1, 2, (k, n)).astype(np.int8), "w"),
                 numpy_helper.from_array(np.array(128, np.uint8), "zp")]
        node = helper.make_node("MatMulInteger", ["x", "w", "zp"], ["y"])
        types = TensorProto.UINT8, TensorProto.INT32
    graph = helper.make_graph([node], kind, [helper.make_tensor_value_info("x", types[0], ["m", k])],
                              [helper.make_tensor_value_info("y", types[1], ["m", n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def cpu_flags() -> str:
    with open("/proc/cpuinfo") as f:
        flags = next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), [])
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    return ", ".join(f"{w}: {'yes' if w in flags else 'no'}" for w in wanted)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--in-features", type=int, default=1024)
    p.add_argument("--out-features", type=int, default=3072)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=7)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    k, n = args.in_features, args.out_features
    runs = {"fp32 MatMul": (session("fp32", k, n, args.threads, rng),
                            rng.standard_normal((args.tokens, k)).astype(np.float32)),
            "uint8 x int8 MatMulInteger": (session("int8", k, n, args.threads, rng),
                                           rng.integers(0, 256, (args.tokens, k)).astype(np.uint8))}
    times = {name: [] for name in runs}
    for sess, x in runs.values():
        sess.run(None, {"x": x})
    for _ in range(args.reps):
        for name, (sess, x) in runs.items():
            time.sleep(PAUSE_S)
            t = time.perf_counter()
            sess.run(None, {"x": x})
            times[name].append(time.perf_counter() - t)
    print(f"CPU flags: {cpu_flags()}; {args.threads} threads; {args.tokens} tokens x {k} -> {n}")
    for name, ts in times.items():
        print(f"{name}: best {1e3 * min(ts):.1f} ms, median {1e3 * float(np.median(ts)):.1f} ms")
    fp, q = (times[name] for name in runs)
    print(f"integer / float speed-up: best {min(fp) / min(q):.2f}x, median {np.median(fp) / np.median(q):.2f}x")


if __name__ == "__main__":
    main()
