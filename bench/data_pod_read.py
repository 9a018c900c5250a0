"""A pod reading one prepared dataset in place: under ``bitembed-jax local-pod`` with 4 processes, the records
each process read and the time from start to the first batch and to step 1, at two corpus sizes.

    python bench/data_pod_read.py [--sizes 200000,2000000] [--repeats 2] [--out DIR]

Synthetic short pairs (a 6-word query, a 12-word passage), the smallest size built with
``tfds_builder.build_dataset`` into a folder every process opens (a shared mount or gs:// on a real pod); each
larger size (a multiple of it) is that build's shard copied k times into a k-shard dataset of the same format
(records repeated: what is timed is opening and indexing k times more records, not their content), because a
2M build takes most of an hour on this shared 2-core machine; its build time is extrapolated from the measured
rate. A tiny fp encoder, 1 CPU device per process, batch 64, one step: what is
timed is the start (imports, joining, opening the dataset, compiling), which must not grow with the corpus.
The sizes run alternately, ``--repeats`` times each (the machine is shared). The build time is also reported:
it is what every host paid before step 1 when each built its own copy (the old path for a gs:// dataset).
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PROCESSES, BATCH = 4, 64
WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau "
         "upsilon phi chi psi omega").split()


def write_pairs(path: str, n: int):
    with open(path, "w") as f:
        for i in range(n):
            w = [WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(12)]
            f.write(json.dumps({"query": f"{i} " + " ".join(w[:5]), "positive": f"doc {i} " + " ".join(w)}) + "\n")


def build(root: str, n: int) -> tuple[str, float, int]:
    from bitembed_jax.data.tfds_builder import build_dataset

    src, out, record = (os.path.join(root, name) for name in (f"pairs-{n}.jsonl", f"ds-{n}", f"build-{n}.json"))
    if os.path.exists(record):  # an earlier invocation with the same --out built it
        return out, json.load(open(record))["seconds"], os.path.getsize(src)
    write_pairs(src, n)
    t0 = time.perf_counter()
    build_dataset([src], out)
    secs = time.perf_counter() - t0
    json.dump({"seconds": secs}, open(record, "w"))
    return out, secs, os.path.getsize(src)


def tile(base: str, n_base: int, k: int) -> str:
    """A k-shard dataset of k copies of ``base``'s one shard: the layout a k*n_base build writes."""
    out = f"{base}-x{k}"
    os.makedirs(out, exist_ok=True)
    info = json.load(open(os.path.join(base, "dataset_info.json")))
    split = info["splits"][0]
    shard = os.path.join(base, f"{info['name']}-train.array_record-00000-of-00001")
    for i in range(k):
        dst = os.path.join(out, f"{info['name']}-train.array_record-{i:05d}-of-{k:05d}")
        if not os.path.exists(dst):
            os.link(shard, dst)  # the same bytes, no copy
    split.update(numBytes=str(int(split["numBytes"]) * k), shardLengths=[str(n_base)] * k)
    json.dump(info, open(os.path.join(out, "dataset_info.json"), "w"))
    for name in ("features.json",):
        with open(os.path.join(base, name)) as r, open(os.path.join(out, name), "w") as w:
            w.write(r.read())
    meta = json.load(open(os.path.join(base, "metadata.json")))
    meta["splits"]["train"]["count"] = n_base * k
    json.dump(meta, open(os.path.join(out, "metadata.json"), "w"))  # last: marks the folder finished
    return out


def encoder(root: str) -> str:
    from bitembed_jax.convert.hf_import import convert
    from bitembed_jax.testing.tiny_hf import make_tiny_hf

    out = os.path.join(root, "enc")
    if os.path.exists(out):
        return out
    return convert(make_tiny_hf("qwen3", os.path.join(root, "hf")), out, mode="fp")


def run_pod(root: str, enc: str, dataset: str, tag: str) -> dict:
    workdir, reads, cache = (os.path.join(root, f"{x}-{tag}") for x in ("run", "reads", "cache"))
    cmd = [sys.executable, "-m", "bitembed_jax.cli", "local-pod", "--processes", str(PROCESSES),
           "--devices-per-process", "1", "--", "train", "--config", os.path.join(ROOT, "configs", "quickstart.py"),
           "--workdir", workdir, "--init-from", enc, "--config.init.mode=fp", "--config.train.num_steps=1",
           f"--config.train.batch_size={BATCH}", "--config.train.log_every=1", "--config.train.warmup_steps=0",
           "--config.data.train_files=[]", f"--config.data.dataset_dir={dataset}", "--config.data.query_max_len=16",
           "--config.data.query_instruction=",
           "--config.data.passage_max_len=24", "--config.checkpoint.async_save=False"]
    env = {**os.environ, "PYTHONPATH": ROOT, "BITEMBED_CACHE": cache, "BITEMBED_DATA_READS": reads}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first_batch, lines = None, []
    for line in proc.stdout:
        lines.append(line)
        if first_batch is None and "step 1: compiling" in line:  # printed once the first batch is read
            first_batch = time.perf_counter() - t0
    rc = proc.wait()
    total = time.perf_counter() - t0
    if rc:
        raise SystemExit(f"local-pod failed ({rc}):\n{''.join(lines[-40:])}")
    counts = [json.load(open(os.path.join(reads, f"process-{i}.json")))["count"] for i in range(PROCESSES)]
    copied = sum(len(files) for _, _, files in os.walk(cache)) if os.path.exists(cache) else 0
    return {"first_batch_s": first_batch, "step1_s": total, "reads": counts, "cache_files": copied}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="200000,2000000")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=None, help="a folder to keep the datasets and runs in (default: a temporary one)")
    args = ap.parse_args()
    root = args.out or tempfile.mkdtemp(prefix="data_pod_read-")
    os.makedirs(root, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    enc = encoder(root)
    base, secs, nbytes = build(root, sizes[0])
    rate = sizes[0] / secs
    print(f"build {sizes[0]} pairs ({nbytes / 1e6:.0f} MB jsonl): {secs:.1f} s ({rate:,.0f} pairs/s), one process")
    built = {n: (base if n == sizes[0] else tile(base, sizes[0], n // sizes[0]), n / rate) for n in sizes}
    results = {n: [] for n in sizes}
    for r in range(args.repeats):
        for n in sizes:
            results[n].append(run_pod(root, enc, built[n][0], f"{n}-{r}"))
            print(n, results[n][-1], flush=True)
    print(f"\nhost: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, shared with other jobs; "
          f"{PROCESSES} processes x 1 CPU device, global batch {BATCH}, 1 step")
    print("| pairs | records read per process (step 1 + read-ahead) | files in the hosts' cache | to first batch (s) "
          "| to end of step 1 (s) | per-host build before (s) |")
    print("|---|---|---|---|---|---|")
    for n in sizes:
        rs = results[n]
        fb = ", ".join(f"{x['first_batch_s']:.1f}" for x in rs)
        st = ", ".join(f"{x['step1_s']:.1f}" for x in rs)
        print(f"| {n:,} | {rs[0]['reads']} of {n:,} | {rs[0]['cache_files']} | {fb} | {st} | {built[n][1]:.0f} |")
    print("(per-host build: the measured build rate times the size; every host paid it before step 1)")


if __name__ == "__main__":
    main()
