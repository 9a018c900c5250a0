#!/usr/bin/env python3
"""Cloud TPU VM launcher for bitembed-jax: create, install, run on every worker, logs, stop, delete.

Every subcommand prints the exact command lines (``+ gcloud ...``) before running them; ``--dry-run``
(or ``DRY_RUN=1``) only prints. Values of ``run --env`` variables that hold secrets (names with TOKEN, KEY,
SECRET or PASSWORD) are never printed and never put on a command line, where other users of this machine or
of the VMs could read them in the process list: they reach the workers in a file of mode 0600 that the
remote shell reads and deletes before starting the job. Settings come from flags or the environment:

    PROJECT  ZONE  TPU_NAME  ACCELERATOR  RUNTIME_VERSION  SLICES  QUEUED  QR_ID  SPOT  GIT_URL  GIT_REF

One slice is addressed as a TPU VM (``gcloud compute tpus tpu-vm ... --worker=all``); several slices
(``--slices N``) are one queued resource whose nodes are addressed together (``--node=all --worker=all``).
Standard library only, so it runs wherever gcloud does.
"""
import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

# default TPU software version per accelerator family (gcloud has none for the runtime)
RUNTIMES = (
    ("v5litepod", "v2-alpha-tpuv5-lite"),
    ("v5p", "v2-alpha-tpuv5"),
    ("v6e", "v2-alpha-tpuv6e"),
    ("v4", "tpu-ubuntu2204-base"),
)
# bitembed-jax needs Python >= 3.11 and the TPU images ship 3.10, so install uses uv to fetch one
UV = '"$HOME"/.local/bin/uv'
UV_INSTALL = f"(test -x {UV} || curl -LsSf https://astral.sh/uv/install.sh | sh)"
ARCHIVE = "bitembed-jax-src.tar.gz"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET_WORDS = ("TOKEN", "KEY", "SECRET", "PASSWORD")


def fail(message: str):
    """A usage error: one line on stderr naming the flag (and its environment variable), exit status 1."""
    raise SystemExit(f"tpu.py: error: {message}")


def _truthy(value):
    return str(value).lower() in ("1", "true", "yes", "on")


def _remote(path: str) -> str:
    """A shell word for a path on the workers; relative paths are under $HOME (ssh's starting directory)."""
    if path.startswith("/"):
        return shlex.quote(path)
    return '"$HOME"/' + shlex.quote(path)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("settings (flag, else environment variable)")
    g.add_argument("--project", help="GCP project (env PROJECT; else gcloud's default project)")
    g.add_argument("--zone", help="TPU zone, e.g. us-west4-a (env ZONE)")
    g.add_argument("--name", help="TPU VM name; node prefix for multi-slice (env TPU_NAME)")
    g.add_argument("--slices", type=int, help="number of slices; >1 means a multi-slice queued resource (env SLICES)")
    g.add_argument("--queued", action="store_true",
                   help="the TPU is (to be) a queued resource (env QUEUED=1)")
    g.add_argument("--qr-id", help="queued resource id (env QR_ID; default: the TPU name)")
    g.add_argument("--remote-dir", default="bitembed-jax", help="checkout on the workers, relative to $HOME")
    g.add_argument("--venv", default="bitembed-venv", help="virtualenv on the workers, relative to $HOME")
    g.add_argument("--dry-run", action="store_true", help="only print the commands (env DRY_RUN=1)")

    p = argparse.ArgumentParser(prog="tpu.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    c = sub.add_parser("create", parents=[common], help="create the TPU VM (or queued resource)")
    c.add_argument("--accelerator", help="accelerator type per slice, e.g. v5litepod-256 (env ACCELERATOR)")
    c.add_argument("--runtime-version", help="TPU software version (env RUNTIME_VERSION; default by accelerator)")
    c.add_argument("--spot", action="store_true", help="Spot capacity: cheap, preemptible (env SPOT=1)")

    sub.add_parser("wait", parents=[common], help="wait until a queued resource is ACTIVE")

    i = sub.add_parser("install", parents=[common], help="put the code on every worker and pip install it")
    i.add_argument("--git", help="clone this URL on the workers (env GIT_URL); default: copy this checkout")
    i.add_argument("--ref", help="commit/branch/tag to install (env GIT_REF; default HEAD)")
    i.add_argument("--python", default="3.11", help="Python version of the workers' virtualenv")

    r = sub.add_parser("run", parents=[common], help="run a command on every worker (background, logged)")
    r.add_argument("--job", default="train", help="job name: log ~/bitembed-logs/JOB.log, pid file JOB.pid")
    r.add_argument("--env", action="append", default=[], metavar="KEY[=VALUE]",
                   help="extra environment (repeatable); KEY alone passes this shell's value of KEY, which keeps "
                        "a secret off the command line")
    r.add_argument("--foreground", action="store_true", help="wait for it and stream its output (no log file)")
    r.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command, e.g. -- bitembed-jax train ...")

    lg = sub.add_parser("logs", parents=[common], help="stream a job's log from one worker")
    lg.add_argument("--job", default="train")
    lg.add_argument("--worker", default="0")
    lg.add_argument("--node", default="0", help="slice index (multi-slice)")
    lg.add_argument("--lines", type=int, default=100)

    s = sub.add_parser("stop", parents=[common], help="SIGTERM a job on every worker (it checkpoints, then exits)")
    s.add_argument("--job", default="train")

    d = sub.add_parser("delete", parents=[common], help="delete the TPU VM / queued resource")
    d.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    sub.add_parser("status", parents=[common], help="describe the TPU VM / queued resource")
    return p


def _resolve(args):
    """Fill unset flags from the environment; every later error names both the flag and the variable."""
    env = os.environ
    args.project = args.project or env.get("PROJECT")
    args.zone = args.zone or env.get("ZONE")
    args.name = args.name or env.get("TPU_NAME")
    if args.slices is None:
        try:
            args.slices = int(env.get("SLICES", "1"))
        except ValueError:
            fail(f"the environment variable SLICES must be an integer, got {env['SLICES']!r}")
    args.queued = args.queued or _truthy(env.get("QUEUED", "")) or args.slices > 1
    args.qr_id = args.qr_id or env.get("QR_ID") or args.name
    args.dry_run = args.dry_run or _truthy(env.get("DRY_RUN", ""))
    if args.cmd == "create":
        args.accelerator = args.accelerator or env.get("ACCELERATOR")
        args.runtime_version = args.runtime_version or env.get("RUNTIME_VERSION")
        args.spot = args.spot or _truthy(env.get("SPOT", ""))
    if args.cmd == "install":
        args.git = args.git or env.get("GIT_URL")
        args.ref = args.ref or env.get("GIT_REF") or "HEAD"
    if args.slices < 1:
        fail(f"--slices (env SLICES) must be >= 1, got {args.slices}")
    need = [("zone", "--zone", "ZONE"), ("name", "--name", "TPU_NAME")]
    if args.cmd == "create":
        need.append(("accelerator", "--accelerator", "ACCELERATOR"))
    for attr, flag, var in need:
        if not getattr(args, attr):
            fail(f"{flag} is not set (pass {flag} or set the environment variable {var})")
    if args.cmd == "create" and not args.runtime_version:
        args.runtime_version = next((v for p, v in RUNTIMES if args.accelerator.startswith(p)), None)
        if not args.runtime_version:
            fail(f"no default runtime for {args.accelerator}: pass --runtime-version "
                 "or set the environment variable RUNTIME_VERSION")
    return args


def _gcloud(a, *words):
    """gcloud compute tpus WORDS --zone=.. [--project=..]; callers append their own flags after these."""
    return ["gcloud", "compute", "tpus", *words, f"--zone={a.zone}"] + ([f"--project={a.project}"] if a.project else [])


def _ssh(a, remote: str, worker="all", node="all"):
    """Run `remote` (one shell string) on the workers; multi-slice goes through the queued resource."""
    if a.slices > 1:
        return _gcloud(a, "queued-resources", "ssh", a.qr_id) + [
            f"--node={node}", f"--worker={worker}", f"--command={remote}"]
    return _gcloud(a, "tpu-vm", "ssh", a.name) + [f"--worker={worker}", f"--command={remote}"]


def _scp(a, local: str, remote: str):
    if a.slices > 1:
        return _gcloud(a, "queued-resources", "scp", local, f"{a.qr_id}:{remote}") + ["--node=all", "--worker=all"]
    return _gcloud(a, "tpu-vm", "scp", local, f"{a.name}:{remote}") + ["--worker=all"]


def plan_create(a):
    spot = ["--spot"] if a.spot else []
    if a.queued:
        nodes = [f"--node-count={a.slices}", f"--node-prefix={a.name}"] if a.slices > 1 else [f"--node-id={a.name}"]
        return [_gcloud(a, "queued-resources", "create", a.qr_id) + [
            f"--accelerator-type={a.accelerator}", f"--runtime-version={a.runtime_version}", *nodes, *spot]]
    return [_gcloud(a, "tpu-vm", "create", a.name) + [
        f"--accelerator-type={a.accelerator}", f"--version={a.runtime_version}", *spot]]


def plan_install(a):
    src, venv = _remote(a.remote_dir), _remote(a.venv)
    if a.git:
        fetch = (f"(test -d {src}/.git || git clone --quiet {shlex.quote(a.git)} {src}) && "
                 f"git -C {src} fetch --quiet origin {shlex.quote(a.ref)} && "
                 f"git -C {src} checkout --quiet --force FETCH_HEAD")
        cmds = []
    else:
        # a committed tree (git archive): reproducible, and no local build outputs or venvs travel
        local = os.path.join("/tmp", ARCHIVE)
        cmds = [["git", "-C", REPO_ROOT, "archive", "--format=tar.gz", "-o", local, a.ref],
                _scp(a, local, ARCHIVE)]
        fetch = f"rm -rf {src} && mkdir -p {src} && tar -xzf {_remote(ARCHIVE)} -C {src}"
    remote = " && ".join([
        f"({fetch})", UV_INSTALL,
        f"(test -x {venv}/bin/python || {UV} venv --python {shlex.quote(a.python)} {venv})",
        f"cd {src}",
        f"{UV} pip install --python {venv}/bin/python -r requirements.txt -e \".[tpu]\" gcsfs",
        f"{venv}/bin/bitembed-jax --help >/dev/null && echo \"$(hostname): bitembed-jax installed\"",
    ])
    return cmds + [_ssh(a, remote)]


def is_secret(name: str) -> bool:
    return any(word in name.upper() for word in SECRET_WORDS)


def _env_items(items):
    """[(KEY, value)] of the --env arguments; KEY alone takes its value from this process's environment."""
    env = []
    for item in items:
        key, sep, value = item.partition("=")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            fail(f"--env expects KEY=VALUE or KEY, got {key!r}")
        if not sep:
            if key not in os.environ:
                fail(f"--env {key}: {key} is not set in this environment; export it or pass KEY=VALUE")
            value = os.environ[key]
        elif is_secret(key):
            print(f"tpu.py: warning: the value of {key} is on tpu.py's own command line (process list, shell "
                  f"history); export {key} and pass --env {key} instead", file=sys.stderr)
        env.append((key, value))
    return env


def _exports(a, env):
    # jax finds the slice (and, for multi-slice, the MEGASCALE settings the queued resource put on the
    # VMs) by itself on TPU VMs: no jax.distributed arguments needed, only the platform and the venv
    words = [f"{k}={shlex.quote(v)}" for k, v in [("JAX_PLATFORMS", "tpu"), *env]]
    return "export " + " ".join(words + [f'PATH={_remote(a.venv)}/bin:"$PATH"'])


def _secrets_plan(a, secrets):
    """(commands that copy the secrets file to every worker, the remote shell that loads and deletes it).

    The file is written only when the commands run (``write_secrets``), under a name of this process."""
    if not secrets:
        a.secrets_file = None
        return [], ""
    name = f".bitembed-{a.job}.env"
    a.secrets_file = os.path.join(tempfile.gettempdir(), f"bitembed-{os.getpid()}-{a.job}.env")
    a.secrets = secrets
    remote = _remote(name)
    load = f". {remote}; loaded=$?; rm -f {remote}; [ $loaded = 0 ] || exit 1; "
    return [_scp(a, a.secrets_file, name)], load


def write_secrets(path: str, secrets):
    """``export KEY=value`` lines in a new file of mode 0600 (scp gives the copies on the workers its mode)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.writelines(f"export {k}={shlex.quote(v)}\n" for k, v in secrets)


def _job_paths(job: str):
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", job):
        fail(f"--job must be a plain name, got {job!r}")
    return _remote(f"bitembed-logs/{job}.log"), _remote(f"bitembed-logs/{job}.pid")


def plan_run(a):
    command = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not command:
        fail("run needs a command after --, e.g. run -- bitembed-jax train ...")
    cmd = shlex.join(command)
    log, pid = _job_paths(a.job)
    env = _env_items(a.env)
    copy, load = _secrets_plan(a, [(k, v) for k, v in env if is_secret(k)])
    head = f"cd {_remote(a.remote_dir)} || exit 1; {_exports(a, [(k, v) for k, v in env if not is_secret(k)])}; "
    if a.foreground:
        return copy + [_ssh(a, load + head + cmd)]
    # setsid+nohup: the job outlives the ssh session; $! is the job itself, so `stop` signals it directly
    remote = (load + f"mkdir -p {_remote('bitembed-logs')}; "
              f"if [ -f {pid} ] && kill -0 \"$(cat {pid})\" 2>/dev/null; then "
              f"echo \"$(hostname): job {a.job} is already running\" >&2; exit 1; fi; "
              + head +
              f"setsid nohup {cmd} > {log} 2>&1 < /dev/null & echo $! > {pid}; "
              f"echo \"$(hostname): started {a.job}, log {log}\"")
    return copy + [_ssh(a, remote)]


def plan_logs(a):
    log, _ = _job_paths(a.job)
    return [_ssh(a, f"tail -n {a.lines} -F {log}", worker=a.worker, node=a.node)]


def plan_stop(a):
    _, pid = _job_paths(a.job)
    # SIGTERM, as a preemption would send: the train loop saves a checkpoint and exits
    remote = (f"if [ -f {pid} ] && kill -TERM \"$(cat {pid})\" 2>/dev/null; "
              f"then echo \"$(hostname): sent SIGTERM to {a.job}\"; "
              f"else echo \"$(hostname): {a.job} is not running\"; fi")
    return [_ssh(a, remote)]


def plan_delete(a):
    quiet = ["--quiet"] if a.yes else []
    if a.queued:  # --force also deletes the TPU nodes the queued resource holds
        return [_gcloud(a, "queued-resources", "delete", a.qr_id) + ["--force", *quiet]]
    return [_gcloud(a, "tpu-vm", "delete", a.name) + quiet]


def plan_status(a):
    if a.queued:
        return [_gcloud(a, "queued-resources", "describe", a.qr_id)]
    return [_gcloud(a, "tpu-vm", "describe", a.name)]


def _check_gcloud():
    if shutil.which("gcloud") is None:
        fail("gcloud not found on PATH; install the Google Cloud SDK "
             "(https://cloud.google.com/sdk/docs/install) or use --dry-run to print the commands")


def execute(cmds, dry_run: bool) -> int:
    if not dry_run:
        _check_gcloud()
    for cmd in cmds:
        print("+ " + shlex.join(cmd), flush=True)
        if not dry_run:
            rc = subprocess.call(cmd)
            if rc:
                print(f"tpu.py: command failed with exit status {rc}", file=sys.stderr)
                return rc
    return 0


def wait_active(a, poll_s: float = 30.0) -> int:
    """Poll a queued resource until ACTIVE (nodes exist); FAILED/SUSPENDED end the wait with an error."""
    if not a.queued:
        print("not a queued resource: tpu-vm create returns once the TPU exists, nothing to wait for")
        return 0
    cmd = _gcloud(a, "queued-resources", "describe", a.qr_id) + ["--format=value(state.state)"]
    print("+ " + shlex.join(cmd) + "   # repeated until ACTIVE", flush=True)
    if a.dry_run:
        return 0
    _check_gcloud()
    while True:
        state = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
        print(f"{time.strftime('%H:%M:%S')} {a.qr_id}: {state}", flush=True)
        if state == "ACTIVE":
            return 0
        if state in ("FAILED", "SUSPENDED", "SUSPENDING"):
            print(f"tpu.py: queued resource {a.qr_id} is {state}; see `tpu.py status`", file=sys.stderr)
            return 1
        time.sleep(poll_s)


PLANS = dict(create=plan_create, install=plan_install, run=plan_run, logs=plan_logs, stop=plan_stop,
             delete=plan_delete, status=plan_status)


def main(argv=None) -> int:
    args = _resolve(_parser().parse_args(argv))
    if args.cmd == "wait":
        return wait_active(args)
    cmds = PLANS[args.cmd](args)
    secrets_file = getattr(args, "secrets_file", None)
    if not secrets_file:
        return execute(cmds, args.dry_run)
    print(f"# {' '.join(f'{k}=***' for k, _ in args.secrets)}: to the workers in a file of mode 0600 "
          f"({secrets_file}), read and deleted there before the job starts", flush=True)
    if args.dry_run:
        return execute(cmds, True)
    try:
        write_secrets(secrets_file, args.secrets)
        return execute(cmds, False)
    finally:
        if os.path.exists(secrets_file):
            os.remove(secrets_file)


if __name__ == "__main__":
    sys.exit(main())
