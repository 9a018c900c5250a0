"""``bitembed-jax local-pod``: rehearse a pod run on one machine.

Starts N processes of one ``bitembed-jax`` subcommand, each with D CPU devices, joined through JAX's
distributed runtime on 127.0.0.1 (as the hosts of a pod are), prefixes every line of their output with the
process id, forwards SIGTERM / SIGINT to all of them (a maintenance event, Ctrl-C), and as soon as one fails
stops the others and exits with the failing process's status.
"""
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

DEVICE_FLAG = "--xla_force_host_platform_device_count"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(base: dict, port: int, n: int, i: int, devices: int) -> dict:
    env = dict(base)
    flags = re.sub(rf"{DEVICE_FLAG}=\S+", "", env.get("XLA_FLAGS", "")).strip()
    env.update(XLA_FLAGS=f"{flags} {DEVICE_FLAG}={devices}".strip(), JAX_PLATFORMS="cpu",
               JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(n), JAX_PROCESS_ID=str(i),
               PYTHONUNBUFFERED="1")
    if i:  # one progress bar: process 0's (the others' would interleave on the same terminal)
        env["TQDM_DISABLE"] = "1"
    return env


def _pump(stream, prefix: str, out):
    """Copy a child's output line by line (progress bars' carriage returns end a line too) with a prefix."""
    buf = b""
    for chunk in iter(lambda: stream.read1(4096), b""):
        buf += chunk
        while True:
            cut = min((i for i in (buf.find(b"\n"), buf.find(b"\r")) if i >= 0), default=-1)
            if cut < 0:
                break
            line, end, buf = buf[:cut], buf[cut:cut + 1], buf[cut + 1:]
            out.write(prefix + line.decode(errors="replace") + end.decode())
            out.flush()
    if buf:
        out.write(prefix + buf.decode(errors="replace") + "\n")
        out.flush()


def _describe(rc: int) -> str:
    return f"was killed by {signal.Signals(-rc).name}" if rc < 0 else f"exited with status {rc}"


def run(command: list[str], processes: int, devices: int, *, grace_s: float = 30.0, log=None) -> int:
    """Run ``bitembed-jax COMMAND`` as ``processes`` processes; returns 0 or the first failure's status."""
    log = log or (lambda m: print(f"local-pod: {m}", file=sys.stderr, flush=True))
    port = free_port()
    argv = [sys.executable, "-m", "bitembed_jax.cli", *command]
    procs, pumps = [], []
    for i in range(processes):
        p = subprocess.Popen(argv, env=child_env(os.environ, port, processes, i, devices), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, start_new_session=True)  # signals reach them through us
        procs.append(p)
        pumps.append(threading.Thread(target=_pump, args=(p.stdout, f"[{i}] ", sys.stdout), daemon=True))
        pumps[-1].start()
    log(f"{processes} processes x {devices} CPU devices, coordinator 127.0.0.1:{port}: {' '.join(command)}")

    def forward(signum, _frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        rc = _wait(procs, grace_s, log)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        for t in pumps:
            t.join(timeout=5)
    return rc


def _wait(procs, grace_s: float, log) -> int:
    while True:
        codes = [p.poll() for p in procs]
        failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
        if failed:
            i, rc = failed[0]
            log(f"process {i} {_describe(rc)}; stopping the others")
            _stop(procs, grace_s)
            return rc if rc > 0 else 128 - rc
        if all(c == 0 for c in codes):
            return 0
        time.sleep(0.2)


def _stop(procs, grace_s: float):
    """SIGTERM (they checkpoint if they can), then SIGKILL after ``grace_s``."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _run_cli(args, extra):
    command = list(extra)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise ValueError("local-pod: give the subcommand to run after --, e.g. -- train --config ...")
    if command[0] in ("local-pod", "make-tiny", "convert", "export", "average", "aot"):
        raise ValueError(f"local-pod runs train, encode or eval; {command[0]!r} is a single-process command")
    if args.processes < 1 or args.devices_per_process < 1:
        raise ValueError("--processes and --devices-per-process must be at least 1")
    return run(command, args.processes, args.devices_per_process, grace_s=args.grace)


def add_local_pod_parser(subparsers):
    x = subparsers.add_parser(
        "local-pod", help="rehearse a pod run: N processes of a subcommand on this machine, D CPU devices each",
        description="Example: bitembed-jax local-pod --processes 2 --devices-per-process 4 -- train --config "
                    "configs/quickstart.py --workdir /tmp/run")
    x.add_argument("--processes", type=int, default=2)
    x.add_argument("--devices-per-process", type=int, default=4)
    x.add_argument("--grace", type=float, default=30.0,
                   help="seconds the others get to stop after one fails, before SIGKILL")
    x.set_defaults(func=_run_cli, takes_overrides=True)
    return x
