"""The ceiling of the ONNX export's speed-up on this CPU: one linear alone, float32 ``MatMul`` against the
uint8 x int8 ``MatMulInteger`` the ternary graph runs (ternary int8 weights, uint8 activation codes with zero
point 128), and against a ternary kernel of our own (``bench/ternary_gemm.c``, built here with the system C
compiler), alternating calls in one process.

    python bench/onnx_matmul_probe.py                   # 1024 x 3072 on 4096 tokens (the issue's probe), 2 threads
    python bench/onnx_matmul_probe.py --tokens 128 --in-features 640 --out-features 2048   # Gemma3's up_proj

No whole ternary graph can be faster than the fp32 one by more than this ratio: the integer matmuls are most
of its time. MLAS runs the integer product with VNNI's vpdpbusd where the CPU has it (AVX512-VNNI or
AVX-VNNI) and with AVX2's vpmaddubsw otherwise; the script prints which flags the CPU reports.

The ternary kernel shows what a custom operator could add on AVX2 CPUs without VNNI (why: the comment atop
``ternary_gemm.c``). Its int32 products must equal MatMulInteger's exactly, or the script stops; it shares the
column blocks among --threads threads.
"""
import argparse
import ctypes
import os
import shutil
import subprocess
import tempfile
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

PAUSE_S = 0.3  # the other session's ORT threads spin for a while after its call
HERE = os.path.dirname(os.path.abspath(__file__))
MR, NR = 4, 32  # ternary_gemm.c's row tile and column block


def session(kind: str, w: np.ndarray, threads: int) -> ort.InferenceSession:
    k, n = w.shape
    if kind == "fp32":
        inits = [numpy_helper.from_array(w.astype(np.float32), "w")]
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
        types = TensorProto.FLOAT, TensorProto.FLOAT
    else:
        inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(128, np.uint8), "zp")]
        node = helper.make_node("MatMulInteger", ["x", "w", "zp"], ["y"])
        types = TensorProto.UINT8, TensorProto.INT32
    graph = helper.make_graph([node], kind, [helper.make_tensor_value_info("x", types[0], ["m", k])],
                              [helper.make_tensor_value_info("y", types[1], ["m", n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


class TernaryKernel:
    """``ternary_gemm.c`` compiled into a temporary folder, with its weights packed once (as a custom operator
    would at session load)."""

    def __init__(self, w: np.ndarray, threads: int):
        cc = shutil.which("cc") or shutil.which("gcc")
        if "avx2: yes" not in cpu_flags():
            raise SystemExit("bench/onnx_matmul_probe.py: bench/ternary_gemm.c needs AVX2, which this CPU lacks")
        if cc is None:
            raise SystemExit("bench/onnx_matmul_probe.py: no C compiler (cc or gcc) on PATH for bench/ternary_gemm.c")
        k, n = w.shape
        if n % NR:
            raise SystemExit(f"bench/onnx_matmul_probe.py: --out-features {n} is not a multiple of {NR}")
        self.dir = tempfile.mkdtemp(prefix="ternary-gemm-")
        so = os.path.join(self.dir, "ternary_gemm.so")
        subprocess.run([cc, "-O3", "-mavx2", "-shared", "-fPIC", "-pthread", os.path.join(HERE, "ternary_gemm.c"),
                        "-o", so, "-lm"], check=True)
        self.lib = ctypes.CDLL(so)
        self.kp, self.n = (k + 1) // 2, n
        self.packed = self._aligned(n // NR * self.kp * 2 * NR)
        w = np.ascontiguousarray(w, np.int8)
        self.lib.pack_ternary(self._ptr(w), k, n, self._ptr(self.packed))
        self.colsum = w.astype(np.int32).sum(0).astype(np.int32)
        self.threads = threads

    @staticmethod
    def _ptr(a: np.ndarray):
        return ctypes.c_void_p(a.ctypes.data)

    @staticmethod
    def _aligned(size: int) -> np.ndarray:
        """int8 zeros at a 32-byte boundary (the kernel's aligned loads of B)."""
        raw = np.zeros(size + 32, np.int8)
        start = -raw.ctypes.data % 32
        return raw[start:start + size]

    def _codes_buffer(self, m: int) -> np.ndarray:
        """Zeroed activation codes for m tokens: rows padded to MR, K to even (the kernel reads the padding)."""
        return np.zeros((-(-m // MR) * MR, 2 * self.kp), np.uint8)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        m = x.shape[0]
        a = self._codes_buffer(m)
        rows = a.shape[0]
        a[:m, :x.shape[1]] = x
        c = np.empty((rows, self.n), np.int32)
        self.lib.ternary_gemm_threads(self._ptr(a), rows, self.kp, self._ptr(self.packed), self.n,
                                      self._ptr(self.colsum), self._ptr(c), self.threads)
        return c[:m]

    def linear(self, x: np.ndarray, norm: np.ndarray | None, gamma: np.ndarray, *, norm_eps: float, eps: float,
               bits: int) -> np.ndarray:
        """The export's whole ternary linear (``ternary_linear`` in the C file): float32 tokens x (M, K) ->
        float32 (M, N), per-token quantization included."""
        m = x.shape[0]
        a = self._codes_buffer(m)
        rows = a.shape[0]
        step = np.empty(rows, np.float32)
        y = np.empty((rows, self.n), np.float32)
        # held in locals: a pointer to a temporary copy would dangle
        x, gamma = np.ascontiguousarray(x, np.float32), np.ascontiguousarray(gamma, np.float32).reshape(-1)
        norm = None if norm is None else np.ascontiguousarray(norm, np.float32)
        norm_ptr = None if norm is None else self._ptr(norm)
        self.lib.ternary_linear(self._ptr(x), m, x.shape[1], norm_ptr,
                                ctypes.c_float(norm_eps), ctypes.c_float(eps), 2 ** (bits - 1) - 1,
                                self._ptr(self.packed), self.n, self._ptr(self.colsum), self._ptr(gamma),
                                int(gamma.size > 1), self._ptr(a), self._ptr(step), self._ptr(y), self.threads)
        return y[:m]

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def cpu_flags() -> str:
    with open("/proc/cpuinfo") as f:
        flags = next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), [])
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    return ", ".join(f"{w}: {'yes' if w in flags else 'no'}" for w in wanted)


def alternating_times(runs: dict, reps: int) -> dict:
    """{name: [seconds per call]} of the callables ``runs``, their calls alternating, a pause before each."""
    times = {name: [] for name in runs}
    for _ in range(reps):
        for name, fn in runs.items():
            time.sleep(PAUSE_S)
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return times


def alternate(fp, mlas, kernel, xf: np.ndarray, x8: np.ndarray, reps: int) -> dict:
    """``alternating_times`` of the three contenders; stops first if the kernel's products differ."""
    runs = {"fp32 MatMul": lambda: fp.run(None, {"x": xf})[0],
            "uint8 x int8 MatMulInteger": lambda: mlas.run(None, {"x": x8})[0],
            "ternary kernel (bench/ternary_gemm.c)": lambda: kernel(x8)}
    if not np.array_equal(runs["uint8 x int8 MatMulInteger"](), kernel(x8)):
        raise SystemExit("bench/onnx_matmul_probe.py: the ternary kernel's int32 products differ from MatMulInteger's")
    return alternating_times(runs, reps)


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
    w = rng.integers(-1, 2, (k, n)).astype(np.int8)
    x8 = rng.integers(0, 256, (args.tokens, k)).astype(np.uint8)
    xf = rng.standard_normal((args.tokens, k)).astype(np.float32)
    fp, mlas = session("fp32", w, args.threads), session("int8", w, args.threads)
    kernel = TernaryKernel(w, args.threads)
    try:
        times = alternate(fp, mlas, kernel, xf, x8, args.reps)
    finally:
        kernel.close()
    print(f"CPU flags: {cpu_flags()}; {args.threads} threads; {args.tokens} tokens x {k} -> {n}")
    for name, ts in times.items():
        print(f"{name}: best {1e3 * min(ts):.1f} ms, median {1e3 * float(np.median(ts)):.1f} ms")
    fp, q, tk = times.values()
    print(f"integer / float speed-up: best {min(fp) / min(q):.2f}x, median {np.median(fp) / np.median(q):.2f}x")
    print(f"ternary kernel / MatMulInteger speed-up: best {min(q) / min(tk):.2f}x, median "
          f"{np.median(q) / np.median(tk):.2f}x (int32 products equal)")


if __name__ == "__main__":
    main()
