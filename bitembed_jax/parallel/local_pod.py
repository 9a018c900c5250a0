"""``bitembed-jax local-pod``: rehearse a pod run on one machine.

Starts N processes of one ``bitembed-jax`` subcommand, each with D CPU devices, joined through JAX's
distributed runtime on 127.0.0.1 (as the hosts of a pod are), prefixes every line of their output with the
process id, forwards SIGTERM / SIGINT to all of them (a maintenance event, Ctrl-C), and as soon as one fails
stops the others and exits with the failing process's status.

Their full output goes to a log file; the terminal gets our lines only (``runtime_output.NoiseFilter``: no
gloo connection lines, runtime log lines or fatal-error stacks) and, once a process has failed, only the
others' error lines, then one line of ours naming the checkpoint to resume from. ``--verbose`` shows all.
"""
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

from bitembed_jax.cli_help import add_command
from bitembed_jax.parallel.runtime_output import ENV_VERBOSE, NoiseFilter, log_path, split_lines, verbose

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
               PYTHONUNBUFFERED="1", **{ENV_VERBOSE: "1"})  # the processes print all: we filter, and log all
    if i:  # one progress bar: process 0's (the others' would interleave on the same terminal)
        env["TQDM_DISABLE"] = "1"
    return env


class Output:
    """The processes' lines: all to the log file, to the terminal those ``NoiseFilter`` shows (all if
    ``verbose``); once ``failed`` is set, only other processes' error lines."""

    def __init__(self, path: str, verbose: bool, out=None):
        self.path, self.verbose, self.out = path, verbose, out or sys.stdout
        self.log = open(path, "a", encoding="utf-8", errors="replace")
        self.lock = threading.Lock()
        self.failed = None  # the process whose failure stops the run

    def line(self, i: int, text: str, noise: NoiseFilter):
        kept = text if self.verbose else noise.keep(text)
        if kept is not None and not self.verbose and self.failed not in (None, i):
            kept = kept if kept.lstrip().startswith(("error:", "warning:")) else None
        with self.lock:
            self.log.write(f"[{i}] {text}" if text.endswith(("\n", "\r")) else f"[{i}] {text}\n")
            self.log.flush()
            if kept is not None:
                self.out.write(f"[{i}] {kept}")
                self.out.flush()

    def ours(self, message: str):
        with self.lock:
            self.log.write(f"local-pod: {message}\n")
            self.log.flush()
        print(f"local-pod: {message}", file=sys.stderr, flush=True)


def _pump(stream, i: int, output: Output):
    """Copy one process's output line by line (progress bars' carriage returns end a line too)."""
    noise, buf = NoiseFilter(), b""
    for chunk in iter(lambda: stream.read1(4096), b""):
        lines, buf = split_lines(buf + chunk)
        for line in lines:
            output.line(i, line.decode(errors="replace"), noise)
    if buf:
        output.line(i, buf.decode(errors="replace") + "\n", noise)


def _describe(rc: int) -> str:
    return f"was killed by {signal.Signals(-rc).name}" if rc < 0 else f"exited with status {rc}"


def run(command: list[str], processes: int, devices: int, *, grace_s: float = 30.0, verbose: bool = False,
        out=None) -> int:
    """Run ``bitembed-jax COMMAND`` as ``processes`` processes; returns 0 or the first failure's status."""
    output = Output(log_path("local-pod"), verbose, out)
    port = free_port()
    argv = [sys.executable, "-m", "bitembed_jax.cli", *command]
    procs, pumps = [], []
    for i in range(processes):
        p = subprocess.Popen(argv, env=child_env(os.environ, port, processes, i, devices), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, start_new_session=True)  # signals reach them through us
        procs.append(p)
        pumps.append(threading.Thread(target=_pump, args=(p.stdout, i, output), daemon=True))
        pumps[-1].start()
    output.ours(f"{processes} processes x {devices} CPU devices, coordinator 127.0.0.1:{port}: {' '.join(command)}"
                f" (full output: {output.path})")

    def forward(signum, _frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        rc = _wait(procs, grace_s, output)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        for t in pumps:
            t.join(timeout=5)
    if rc:
        hint = _resume_hint(command)
        output.ours(f"{hint + ' ' if hint else ''}Full output of every process: {output.path}")
    return rc


def _resume_hint(command: list[str]) -> str:
    """For a train command: the checkpoint a rerun resumes from (imports the training stack: only on failure)."""
    if command[:1] != ["train"]:
        return ""
    workdir = _flag_value(command, "--workdir")
    if not workdir:
        return ""
    from bitembed_jax.io import paths
    from bitembed_jax.train.resume import resume_hint

    return resume_hint(paths.absolute(workdir)).replace(" on every process", "")


def _wait(procs, grace_s: float, output: Output) -> int:
    while True:
        codes = [p.poll() for p in procs]
        failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
        if failed:
            i, rc = failed[0]
            output.failed = i
            output.ours(f"process {i} {_describe(rc)}; stopping the others")
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
    check_no_joining_flags(command, args.processes, os.environ)
    return run(command, args.processes, args.devices_per_process, grace_s=args.grace,
               verbose=args.verbose or verbose())


JOINING = (("--coordinator", "JAX_COORDINATOR_ADDRESS"), ("--num-processes", "JAX_NUM_PROCESSES"),
           ("--process-id", "JAX_PROCESS_ID"))


def _flag_value(command: list[str], flag: str) -> str | None:
    for j, arg in enumerate(command):
        if arg == flag:
            return command[j + 1] if j + 1 < len(command) else ""
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def check_no_joining_flags(command: list[str], processes: int, env: dict):
    """local-pod gives each process its coordinator, the number of processes and its id: the same settings in
    the command (they would win, and the processes wait for a job that never forms) or in the environment
    (they would be ignored) are refused, unless they say what local-pod does."""
    for flag, var in JOINING:
        for where, value in ((flag, _flag_value(command, flag)), (f"${var}", env.get(var) or None)):
            if value is None or (flag == "--num-processes" and value == str(processes)):
                continue
            raise ValueError(f"local-pod: {where} {value}: local-pod sets each process's coordinator, process "
                             f"count (--processes {processes}) and id itself; "
                             + ("unset it" if where.startswith("$") else "drop it from the command"))


def add_local_pod_parser(subparsers):
    x = add_command(
        subparsers, "local-pod",
        summary="rehearse a pod run: N processes of a subcommand on this machine, D CPU devices each",
        description="Starts N processes of train, encode or eval (the command after --), joined on 127.0.0.1 as a "
                    "pod's hosts are, each with D CPU devices. Their lines are prefixed with the process id; "
                    "SIGTERM and Ctrl-C reach all of them; when one fails the others are stopped. The runtime's "
                    "own output goes to a log file (named on the first line) unless --verbose.",
        example="bitembed-jax local-pod --processes 2 --devices-per-process 4 -- train --config "
                "configs/quickstart.py --workdir /tmp/run")
    x.add_argument("--processes", type=int, default=2, help="how many processes")
    x.add_argument("--devices-per-process", type=int, default=4, help="CPU devices of each")
    x.add_argument("--grace", type=float, default=30.0,
                   help="seconds the others get to stop after one fails, before SIGKILL")
    x.add_argument("--verbose", action="store_true",
                   help="show every line the processes print (JAX's runtime: gloo, log lines, fatal errors); "
                        "without it they go to the log file only, which the first line names")
    x.set_defaults(func=_run_cli, takes_overrides=True)
    return x
