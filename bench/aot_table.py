"""Per-chip memory of the real train steps on TPU pod topologies, compiled ahead of time on this CPU machine.

    python bench/aot_table.py --outdir runs/aot                 # the rows below, most important first
    python bench/aot_table.py --outdir runs/aot --print-only    # the table from what has been compiled
    python bench/aot_table.py --outdir runs/aot --rows 0 3      # chosen rows only

Each row is one `bitembed-jax aot` run (a subprocess, so compilations don't share memory). A compile takes
10-15 minutes on a 2-core machine, so every result is kept as OUTDIR/<row>.json and a rerun skips the rows
already there: the script can be stopped and resumed. Prints a markdown table for docs/benchmarks.md.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = {"Qwen3-0.6B": "qwen3_0p6b", "Gemma3-270M": "gemma3_270m"}
V5E, V4 = "v5e:16x16", "v4:4x4x2"
PEAK = {"v4": 275e12, "v5e": 197e12}  # bf16 FLOP/s per chip (bitembed_jax.train.aot.CHIPS)
# (model, stage, topology, global batch, GradCache chunks); fine-tuning distils in the same step (no chunks)
ROWS = [
    ("Qwen3-0.6B", "pretrain", V5E, 65536, 4),
    ("Gemma3-270M", "pretrain", V5E, 65536, 2),
    ("Qwen3-0.6B", "finetune", V5E, 4096, 1),
    ("Gemma3-270M", "finetune", V5E, 4096, 1),
    ("Qwen3-0.6B", "pretrain", V5E, 65536, 1),
    ("Qwen3-0.6B", "pretrain", V5E, 16384, 1),
    ("Qwen3-0.6B", "pretrain", V5E, 32768, 1),
    ("Qwen3-0.6B", "pretrain", V4, 65536, 4),
    ("Gemma3-270M", "pretrain", V4, 65536, 2),
    ("Qwen3-0.6B", "finetune", V4, 4096, 1),
    ("Gemma3-270M", "pretrain", V5E, 65536, 1),
    ("Qwen3-0.6B", "pretrain", V5E, 32768, 4),
    ("Qwen3-0.6B", "finetune", V4, 1024, 1),
]


def row_name(row) -> str:
    model, stage, topo, batch, chunks = row
    return f"{MODELS[model]}_{stage}_{topo.replace(':', '-')}_b{batch}_c{chunks}"


def row_config(row):
    model, stage, _, batch, chunks = row
    return (os.path.join(ROOT, "configs", f"{MODELS[model]}_{stage}.py"),
            [f"--config.train.batch_size={batch}", f"--config.loss.num_chunks={chunks}"])


def model_flops_per_chip(row, chips: int) -> float:
    """The step's model FLOPs from the shapes (XLA's count visits a GradCache loop body once)."""
    sys.path.insert(0, ROOT)
    from bitembed_jax.config_loader import apply_overrides, load_config_file
    from bitembed_jax.train.aot import model_flops_per_step
    from bitembed_jax.train.build import student_config

    config, overrides = row_config(row)
    cfg = apply_overrides(load_config_file(config), overrides)
    return model_flops_per_step(student_config(cfg), cfg) / chips


def compile_row(row, path: str) -> dict:
    topo = row[2]
    config, overrides = row_config(row)
    tmp = path + ".tmp"
    cmd = [sys.executable, "-m", "bitembed_jax.cli", "aot", "--config", config, "--topology", topo, "--json", tmp,
           *overrides]
    env = dict(os.environ, JAX_PLATFORMS="cpu", ALLOW_MULTIPLE_LIBTPU_LOAD="1")
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    result = None
    if os.path.exists(tmp) and os.path.getsize(tmp):
        with open(tmp) as f:
            result = json.load(f)
        os.remove(tmp)
    if result is None:
        lines = (proc.stdout + proc.stderr).strip().splitlines()
        oom = [line for line in lines
               if "DOES NOT FIT" in line or "does not fit" in line or "RESOURCE_EXHAUSTED" in line]
        result = {"fits": False, "total_gib": math.nan, "error": (oom or lines[-1:] or ["?"])[-1][:300],
                  "returncode": proc.returncode}
    result["compile_s"] = round(time.time() - t0)
    with open(path + ".part", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(path + ".part", path)  # a killed run leaves no half-written row behind
    return result


def table_line(row, r) -> str:
    model, stage, topo, batch, chunks = row
    hbm = r.get("hbm_gib", math.nan)
    if "error" in r:
        fits = f"no ({r['error'][:80]})"
    else:
        fits = "yes" if r["fits"] else "no"
    detail = (f" (args {r['argument_gib']:.2f}, temporaries {r['temp_gib']:.2f})" if "temp_gib" in r else "")
    if r.get("chips"):
        mflops = model_flops_per_chip(row, r["chips"])
        peak_s = f"{mflops / PEAK[topo.split(':')[0]]:.2f}"
        flops = f"{mflops:.2e} | {peak_s} | {r['flops_per_chip']:.2e}"
    else:
        flops = "- | - | -"
    return (f"| {model} | {stage} | {topo} | {batch:,} | {chunks} | {r['total_gib']:.2f}{detail} | {hbm:.0f} | "
            f"{fits} | {flops} | {r.get('compile_s', '-')} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--outdir", required=True, help="one JSON per compiled row; rows already there are skipped")
    ap.add_argument("--rows", nargs="+", type=int, help=f"indices into ROWS (0..{len(ROWS) - 1}); default all")
    ap.add_argument("--print-only", action="store_true", help="print the table of the rows compiled so far")
    args = ap.parse_args()
    os.makedirs(args.outdir, exist_ok=True)
    print("| model | stage | topology | global batch | chunks | per-chip GiB | HBM GiB | fits | model FLOPs/chip/step "
          "| s/step at peak | XLA FLOPs/chip (loops once) | compile s |")
    print("|---|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|", flush=True)
    for i in args.rows if args.rows is not None else range(len(ROWS)):
        row = ROWS[i]
        path = os.path.join(args.outdir, row_name(row) + ".json")
        if os.path.exists(path):
            with open(path) as f:
                r = json.load(f)
        elif args.print_only:
            continue
        else:
            r = compile_row(row, path)
        print(table_line(row, r), flush=True)


if __name__ == "__main__":
    main()
