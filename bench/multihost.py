"""The quickstart as 1 x 8, 2 x 4 and 4 x 2 processes x CPU devices (``bitembed-jax local-pod``), side by side:
wall time, the median step time, whether the losses agree; then how long the survivors take to stop after one
process is killed.

    python bench/multihost.py --init-from ENCODER [--steps 60] [--heartbeat 20]

CPU collectives over gloo are slow: the point is that the numbers agree and that nothing hangs. The quickstart
is a BitNet model: the all-reduce across processes sums in another order than one process does, which can flip
an int8/ternary rounding a few steps in, and such flips compound (tests/test_multihost.py compares fp runs to
1e-5), so the table says through which step the losses agree to 1e-5.
"""
import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pod_command(processes, devices, workdir, init_from, steps, extra=()):
    return [sys.executable, "-m", "bitembed_jax.cli", "local-pod", "--processes", str(processes),
            "--devices-per-process", str(devices), *extra, "--", "train", "--config",
            os.path.join(ROOT, "configs", "quickstart.py"), "--workdir", workdir, "--init-from", init_from,
            f"--config.train.num_steps={steps}", "--config.train.log_every=1", "--config.mesh.data=-1"]


def rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def run_layout(processes, devices, root, init_from, steps):
    workdir = os.path.join(root, f"{processes}x{devices}")
    t0 = time.perf_counter()
    r = subprocess.run(pod_command(processes, devices, workdir, init_from, steps), capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": ROOT})
    wall = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(f"{processes}x{devices} failed ({r.returncode}):\n{r.stdout[-3000:]}")
    got = rows(workdir)
    with open(os.path.join(workdir, "config.json")) as f:
        batch = json.load(f)["train"]["batch_size"]
    step_s = statistics.median(batch / row["pairs_per_s"] for row in got[1:]) if len(got) > 1 else float("nan")
    return {"layout": f"{processes} x {devices}", "wall_s": wall, "median_step_s": step_s,
            "losses": [row["loss"] for row in got]}


def lost_host(root, init_from, steps, heartbeat):
    """Kill process 1 of 2 after the first checkpoint; seconds until local-pod has stopped everything."""
    workdir = os.path.join(root, "lost")
    cmd = pod_command(2, 4, workdir, init_from, steps, ("--grace", str(10 * heartbeat)))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": ROOT, "BITEMBED_HEARTBEAT_TIMEOUT": str(heartbeat)})
    ckpts = os.path.join(workdir, "checkpoints")
    while not (os.path.isdir(ckpts) and any(d.isdigit() for d in os.listdir(ckpts))):
        if proc.poll() is not None:
            raise SystemExit("the run ended before its first checkpoint")
        time.sleep(0.1)
    kids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit() and _ppid(int(p)) == proc.pid)
    t0 = time.perf_counter()
    os.kill(kids[-1], signal.SIGKILL)
    out, _ = proc.communicate()
    stopped = time.perf_counter() - t0
    said = [line for line in out.splitlines() if "lost process" in line]
    return {"heartbeat_timeout_s": heartbeat, "survivors_stopped_after_s": stopped, "message": said[:1]}


def _ppid(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return -1


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--init-from", required=True, help="a converted quickstart encoder (bitembed-jax convert)")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--heartbeat", type=int, default=20)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)
    root = args.workdir or tempfile.mkdtemp(prefix="bench-multihost-")
    results = [run_layout(p, d, root, args.init_from, args.steps) for p, d in ((1, 8), (2, 4), (4, 2))]
    ref = results[0]["losses"]
    print("| processes x devices | wall (s) | median step (s) | loss equal to 1 x 8 (1e-5) through step | "
          "max |loss - 1 x 8| |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        diffs = [abs(a - b) for a, b in zip(r["losses"], ref)]
        through = next((i for i, d in enumerate(diffs) if d > 1e-5), len(diffs))
        print(f"| {r['layout']} | {r['wall_s']:.1f} | {r['median_step_s']:.2f} | {through} | {max(diffs):.1e} |")
    lost = lost_host(root, args.init_from, args.steps, args.heartbeat)
    print(f"\nkill -9 of process 1 of 2: everything stopped after {lost['survivors_stopped_after_s']:.1f} s "
          f"(heartbeat timeout {lost['heartbeat_timeout_s']} s); {lost['message']}")


if __name__ == "__main__":
    main()
