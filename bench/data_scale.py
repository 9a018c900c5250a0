"""Data preparation at scale: build throughput at 1 and 2 workers and peak memory vs corpus size.

    python bench/data_scale.py build-speed --pairs 1000000 --repeats 2
    python bench/data_scale.py build-memory --pairs 500000 4000000

Modes are subcommands (``build-speed``, ``build-memory``); each generates its synthetic corpus (12-word queries,
80-word passages, no negatives: the shape of the issue's measurements) into a temp folder, runs
``bitembed-jax data build`` as a child process and measures it from outside: wall time, and the peak resident
memory of its whole process tree (the Beam workers included), sampled every 0.5 s from /proc. A further mode
(e.g. reading a prepared dataset under local-pod) is one more function and subparser.
"""
import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ("the of and to in is was for on that with as by at from his her an which were are this be has had "
         "not have but they their one been all would there more can when who will also into its other than "
         "river city system water energy protein history music market theory season species island engine "
         "language council model climate policy network disease village army signal oxygen century").split()


def write_corpus(folder: str, pairs: int, shards: int = 8, seed: int = 0) -> list[str]:
    """``pairs`` synthetic records over ``shards`` jsonl files (how large corpora come), deterministic."""
    rng = random.Random(seed)
    files = []
    per = -(-pairs // shards)
    for s in range(shards):
        path = os.path.join(folder, f"pairs-{s:03d}.jsonl")
        with open(path, "w") as f:
            for i in range(s * per, min(pairs, (s + 1) * per)):
                q = " ".join(rng.choices(WORDS, k=12))
                p = " ".join(rng.choices(WORDS, k=80))
                f.write(json.dumps({"query": f"{q} {i}?", "positive": f"{p} {i}."}) + "\n")
        files.append(path)
    return files


def _tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            continue
    return total


def run_build(files: list[str], out: str, workers: int) -> dict:
    """One ``data build`` as a child process: wall seconds, CPU seconds of the process tree (what a dedicated
    vCPU would need: the per-worker rate under any load), peak tree RSS, and its final line."""
    cmd = [sys.executable, "-m", "bitembed_jax.cli", "data", "build", *files, "--out", out,
           "--workers", str(workers), "--overwrite"]
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0, cpu0 = time.perf_counter(), _children_cpu()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _tree_rss(proc.pid))
        time.sleep(0.5)
    wall = time.perf_counter() - t0
    proc.wait()
    cpu = _children_cpu() - cpu0
    output = proc.stdout.read()
    if proc.returncode:
        raise SystemExit(f"build failed ({proc.returncode}):\n{output[-3000:]}")
    return {"workers": workers, "seconds": wall, "cpu_seconds": cpu, "peak_rss_bytes": peak,
            "last_line": output.strip().splitlines()[-1]}


def _children_cpu() -> float:
    """User + system CPU seconds of the waited-for descendants (the build and its Beam workers)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def host() -> str:
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 platform.processor())
    flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "")
    extra = [f for f in ("avx512_vnni", "amx_tile") if f in flags.split()]
    return f"{model}, {os.cpu_count()} cores, flags: avx2{''.join(' ' + f for f in extra)}; load {os.getloadavg()}"


def build_speed(args):
    """Build pairs/s at 1 and 2 workers, alternating (1, 2, 1, 2, ...) so both see the same load."""
    with tempfile.TemporaryDirectory(dir=args.tmp) as d:
        files = write_corpus(d, args.pairs)
        runs = []
        for r in range(args.repeats):
            for workers in (1, 2):
                res = run_build(files, os.path.join(d, "out"), workers)
                res["pairs_per_s"] = args.pairs / res["seconds"]
                res["pairs_per_cpu_s"] = args.pairs / res["cpu_seconds"]
                res["load_before"] = os.getloadavg()[0]
                runs.append(res)
                print(json.dumps(res), flush=True)
    best = {w: max(x["pairs_per_s"] for x in runs if x["workers"] == w) for w in (1, 2)}
    pairs = [(a["pairs_per_s"], b["pairs_per_s"]) for a, b in zip(runs[::2], runs[1::2])]
    print(json.dumps({"mode": "build-speed", "pairs": args.pairs, "best_pairs_per_s": best,
                      "speedup_per_round": [b / a for a, b in pairs], "host": host()}))


def build_memory(args):
    """Peak RSS of the whole build (process tree) at each corpus size, one worker."""
    results = []
    for n in args.pairs:
        with tempfile.TemporaryDirectory(dir=args.tmp) as d:
            files = write_corpus(d, n)
            size = sum(os.path.getsize(f) for f in files)
            res = run_build(files, os.path.join(d, "out"), args.workers)
            res.update(pairs=n, input_bytes=size, pairs_per_s=n / res["seconds"],
                       pairs_per_cpu_s=n / res["cpu_seconds"])
            results.append(res)
            print(json.dumps(res), flush=True)
    print(json.dumps({"mode": "build-memory", "peak_rss_ratio_last_over_first":
                      results[-1]["peak_rss_bytes"] / results[0]["peak_rss_bytes"], "host": host()}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("build-speed")
    s.add_argument("--pairs", type=int, default=1_000_000)
    s.add_argument("--repeats", type=int, default=2)
    s.set_defaults(func=build_speed)
    m = sub.add_parser("build-memory")
    m.add_argument("--pairs", type=int, nargs="+", default=[500_000, 4_000_000])
    m.add_argument("--workers", type=int, default=1)
    m.set_defaults(func=build_memory)
    for q in (s, m):
        q.add_argument("--tmp", default=None, help="where the corpus and dataset go (default: the system temp)")
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
