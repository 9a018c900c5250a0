"""Per-chip memory of the real train steps on TPU pod topologies, compiled ahead of time on this CPU machine.

    python bench/aot_table.py [--topologies v5e:16x16 v4:4x4x2] [--batches 16384 32768 65536]

Each row is one `bitembed-jax aot` run (a subprocess, so compilations don't share memory); prints a
markdown table for docs/benchmarks.md.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = {"Qwen3-0.6B": "qwen3_0p6b", "Gemma3-270M": "gemma3_270m"}


def run(config, topology, overrides):
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        cmd = [sys.executable, "-m", "bitembed_jax.cli", "aot", "--config", config, "--topology", topology,
               "--json", f.name, *overrides]
        env = dict(os.environ, JAX_PLATFORMS="cpu", ALLOW_MULTIPLE_LIBTPU_LOAD="1")
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if proc.returncode == 0 or os.path.getsize(f.name):
            try:
                return json.load(open(f.name))
            except json.JSONDecodeError:
                pass
        tail = (proc.stdout + proc.stderr).strip().splitlines()
        fit = [line for line in tail if "DOES NOT FIT" in line or "does not fit" in line]
        return {"fits": False, "total_gib": float("nan"), "error": (fit or tail[-1:] or ["?"])[-1]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--topologies", nargs="+", default=["v5e:16x16", "v4:4x4x2"])
    ap.add_argument("--batches", nargs="+", type=int, default=[16384, 32768, 65536])
    ap.add_argument("--stages", nargs="+", default=["pretrain", "finetune"])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    args = ap.parse_args()
    print("| model | stage | topology | global batch | chunks | per-chip GiB | HBM GiB | fits |")
    print("|---|---|---|---:|---:|---:|---:|---|")
    for model in args.models:
        for stage in args.stages:
            config = os.path.join(ROOT, "configs", f"{MODELS[model]}_{stage}.py")
            # fine-tuning distils in the same step, so it does not chunk
            chunk_options = [1, 4] if stage == "pretrain" else [1]
            for topo in args.topologies:
                for batch in args.batches:
                    for chunks in chunk_options:
                        r = run(config, topo, [f"--config.train.batch_size={batch}",
                                               f"--config.loss.num_chunks={chunks}"])
                        hbm = r.get("hbm_gib", float("nan"))
                        fits = "yes" if r["fits"] else ("no" if "error" not in r else f"no ({r['error'][:60]})")
                        print(f"| {model} | {stage} | {topo} | {batch:,} | {chunks} | {r['total_gib']:.2f} | "
                              f"{hbm:.0f} | {fits} |", flush=True)


if __name__ == "__main__":
    main()
