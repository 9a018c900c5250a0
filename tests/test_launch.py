"""Cloud TPU launch tooling (launch/): the printed gcloud/xpk commands in dry-run mode, and the remote shell
strings executed locally with bash against a fake $HOME (quoting, background job, pid file, SIGTERM stop).

No cloud access: fake `gcloud`/`xpk` on PATH record any call, and every test asserts there was none.
"""
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TPU = ROOT / "launch" / "tpu.py"
SETTINGS = ("PROJECT", "ZONE", "TPU_NAME", "ACCELERATOR", "RUNTIME_VERSION", "SLICES", "QUEUED", "QR_ID",
            "SPOT", "GIT_URL", "GIT_REF", "DRY_RUN", "CLUSTER", "WORKLOAD", "TPU_TYPE", "NUM_SLICES",
            "WORKDIR", "INIT_MODEL", "TRAIN_FILES", "CONFIG", "DOCKER_IMAGE", "BASE_IMAGE", "MAX_RESTARTS")
WHERE = ["--zone=us-west4-a", "--name=emb"]
TRAIN = ["bitembed-jax", "train", "--config", "configs/qwen3_0p6b_pretrain.py", "--workdir", "gs://bkt/runs/r1",
         "--config.data.query_instruction=Given a web query, find the answer"]


@pytest.fixture
def cloud(tmp_path):
    """A PATH whose `gcloud` and `xpk` only record that they were called."""
    bin_dir, calls = tmp_path / "fakebin", tmp_path / "cloud_calls"
    bin_dir.mkdir()
    for name in ("gcloud", "xpk"):
        (bin_dir / name).write_text(f"#!/bin/sh\necho {name} \"$@\" >> {calls}\nexit 3\n")
        (bin_dir / name).chmod(0o755)
    yield dict(path=f"{bin_dir}:{os.environ['PATH']}", calls=calls)
    assert not calls.exists(), f"cloud tools were called: {calls.read_text()}"


def _env(cloud, **extra):
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    env.update(PATH=cloud["path"], PYTHON=sys.executable, **extra)
    return env


def tpu(cloud, *args, env=None, check=True):
    r = subprocess.run([sys.executable, str(TPU), *args], capture_output=True, text=True, cwd=ROOT,
                       env=_env(cloud, **(env or {})), timeout=30)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def commands(stdout: str) -> list[list[str]]:
    """The printed `+ cmd` lines, split back into argv the way a shell would."""
    return [shlex.split(line[2:].split("   # ")[0]) for line in stdout.splitlines() if line.startswith("+ ")]


def flag(cmd: list[str], name: str):
    values = [w.split("=", 1)[1] for w in cmd if w.startswith(name + "=")]
    assert len(values) <= 1, cmd
    return values[0] if values else None


def remote_of(cmd: list[str]) -> str:
    return flag(cmd, "--command")


# ---------------------------------------------------------------- create / wait / delete / status


def test_create_direct_and_spot(cloud):
    (cmd,) = commands(tpu(cloud, "create", *WHERE, "--accelerator=v5litepod-256", "--dry-run").stdout)
    assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "emb"]
    assert flag(cmd, "--zone") == "us-west4-a"
    assert flag(cmd, "--accelerator-type") == "v5litepod-256"
    assert flag(cmd, "--version") == "v2-alpha-tpuv5-lite"  # default runtime for v5e
    assert "--spot" not in cmd and flag(cmd, "--project") is None

    out = tpu(cloud, "create", "--spot", "--dry-run", env=dict(
        PROJECT="my-proj", ZONE="europe-west4-b", TPU_NAME="e2", ACCELERATOR="v5p-128")).stdout
    (cmd,) = commands(out)
    assert cmd[5] == "e2" and "--spot" in cmd
    assert flag(cmd, "--project") == "my-proj" and flag(cmd, "--zone") == "europe-west4-b"
    assert flag(cmd, "--version") == "v2-alpha-tpuv5"


def test_create_queued_and_multislice(cloud):
    (cmd,) = commands(tpu(cloud, "create", *WHERE, "--accelerator=v5litepod-256", "--queued", "--dry-run",
                          env=dict(SPOT="1", RUNTIME_VERSION="my-runtime")).stdout)
    assert cmd[3:6] == ["queued-resources", "create", "emb"]
    assert flag(cmd, "--node-id") == "emb" and flag(cmd, "--runtime-version") == "my-runtime"
    assert "--spot" in cmd and flag(cmd, "--node-count") is None

    (cmd,) = commands(tpu(cloud, "create", *WHERE, "--accelerator=v5litepod-256", "--slices=2", "--qr-id=q1",
                          "--dry-run").stdout)
    assert cmd[3:6] == ["queued-resources", "create", "q1"]
    assert flag(cmd, "--node-count") == "2" and flag(cmd, "--node-prefix") == "emb"
    assert flag(cmd, "--node-id") is None and flag(cmd, "--accelerator-type") == "v5litepod-256"


def test_wait_delete_status(cloud):
    assert "nothing to wait for" in tpu(cloud, "wait", *WHERE, "--dry-run").stdout
    (cmd,) = commands(tpu(cloud, "wait", *WHERE, "--queued", "--dry-run").stdout)
    assert cmd[3:6] == ["queued-resources", "describe", "emb"] and flag(cmd, "--format") == "value(state.state)"

    (cmd,) = commands(tpu(cloud, "delete", *WHERE, "--dry-run").stdout)
    assert cmd[3:6] == ["tpu-vm", "delete", "emb"] and "--quiet" not in cmd  # gcloud asks first
    (cmd,) = commands(tpu(cloud, "delete", *WHERE, "--slices=2", "--yes", "--dry-run").stdout)
    assert cmd[3:6] == ["queued-resources", "delete", "emb"] and "--force" in cmd and "--quiet" in cmd

    (cmd,) = commands(tpu(cloud, "status", *WHERE, "--dry-run").stdout)
    assert cmd[3:6] == ["tpu-vm", "describe", "emb"]


@pytest.mark.parametrize("args, env, named", [
    (["create", "--name=e", "--accelerator=v5litepod-8"], {}, ("--zone", "ZONE")),
    (["create", "--zone=z", "--accelerator=v5litepod-8"], {}, ("--name", "TPU_NAME")),
    (["create", "--zone=z", "--name=e"], {}, ("--accelerator", "ACCELERATOR")),
    (["create", "--zone=z", "--name=e", "--accelerator=v9x-8"], {}, ("--runtime-version", "RUNTIME_VERSION")),
    (["run", "--zone=z"], {}, ("--name", "TPU_NAME")),
    (["run", "--zone=z", "--name=e"], {}, ("run needs a command",)),
    (["run", "--zone=z", "--name=e", "--env=NOVALUE", "--", "true"], {}, ("KEY=VALUE",)),
    (["stop", "--zone=z", "--name=e", "--job=a;b"], {}, ("--job",)),
    (["logs", "--name=e"], {"SLICES": "0", "ZONE": "z"}, ("--slices", "SLICES")),
])
def test_missing_or_bad_settings_name_the_flag(cloud, args, env, named):
    r = tpu(cloud, *args, "--dry-run", env=env, check=False)
    assert r.returncode != 0 and "+ " not in r.stdout
    for word in named:
        assert word in r.stderr, r.stderr


def test_gcloud_missing_is_a_clear_error(cloud, tmp_path):
    r = subprocess.run([sys.executable, str(TPU), "status", *WHERE], capture_output=True, text=True,
                       env={"PATH": str(tmp_path), "HOME": str(tmp_path)}, timeout=30)
    assert r.returncode != 0 and "gcloud not found" in r.stderr and "--dry-run" in r.stderr


# ---------------------------------------------------------------- install / run / logs / stop


def test_install_copies_this_checkout_or_clones(cloud):
    archive, scp, ssh = commands(tpu(cloud, "install", *WHERE, "--dry-run").stdout)
    assert archive[:4] == ["git", "-C", str(ROOT), "archive"] and archive[-1] == "HEAD"
    assert scp[3:5] == ["tpu-vm", "scp"] and scp[5] == archive[archive.index("-o") + 1]
    assert scp[6] == "emb:bitembed-jax-src.tar.gz" and "--worker=all" in scp
    assert ssh[3:6] == ["tpu-vm", "ssh", "emb"] and "--worker=all" in ssh
    remote = remote_of(ssh)
    assert 'tar -xzf "$HOME"/bitembed-jax-src.tar.gz' in remote
    assert 'pip install --python "$HOME"/bitembed-venv/bin/python -r requirements.txt -e ".[tpu]" gcsfs' in remote

    (ssh,) = commands(tpu(cloud, "install", *WHERE, "--slices=2", "--dry-run",
                          env=dict(GIT_URL="https://example.com/org/bitembed jax.git", GIT_REF="v0.1")).stdout)
    assert ssh[3:6] == ["queued-resources", "ssh", "emb"] and "--node=all" in ssh and "--worker=all" in ssh
    remote = remote_of(ssh)
    assert "git clone --quiet 'https://example.com/org/bitembed jax.git'" in remote
    assert "fetch --quiet origin v0.1" in remote


def test_run_command_line(cloud):
    out = tpu(cloud, "run", *WHERE, "--env=GREETING=a b", "--dry-run", "--", *TRAIN).stdout
    (ssh,) = commands(out)
    assert ssh[3:6] == ["tpu-vm", "ssh", "emb"] and "--worker=all" in ssh and flag(ssh, "--zone") == "us-west4-a"
    remote = remote_of(ssh)
    assert shlex.join(TRAIN) in remote  # the override with spaces stays one argument
    assert "'--config.data.query_instruction=Given a web query, find the answer'" in remote
    assert "export JAX_PLATFORMS=tpu GREETING='a b'" in remote
    assert "setsid nohup bitembed-jax train" in remote and '"$HOME"/bitembed-logs/train.log' in remote

    (ssh,) = commands(tpu(cloud, "run", *WHERE, "--slices=2", "--dry-run", "--", *TRAIN).stdout)
    assert ssh[3:6] == ["queued-resources", "ssh", "emb"] and "--node=all" in ssh and "--worker=all" in ssh


def test_logs_and_stop_command_lines(cloud):
    (cmd,) = commands(tpu(cloud, "logs", *WHERE, "--dry-run").stdout)
    assert cmd[3:6] == ["tpu-vm", "ssh", "emb"] and flag(cmd, "--worker") == "0"
    assert remote_of(cmd) == 'tail -n 100 -F "$HOME"/bitembed-logs/train.log'
    (cmd,) = commands(tpu(cloud, "logs", *WHERE, "--slices=2", "--job=ft", "--dry-run").stdout)
    assert cmd[3:5] == ["queued-resources", "ssh"] and flag(cmd, "--node") == "0" and flag(cmd, "--worker") == "0"
    assert "bitembed-logs/ft.log" in remote_of(cmd)
    (cmd,) = commands(tpu(cloud, "stop", *WHERE, "--dry-run").stdout)
    assert "--worker=all" in cmd and 'kill -TERM "$(cat "$HOME"/bitembed-logs/train.pid)"' in remote_of(cmd)


FAKE_JOB = """#!{python}
import json, os, signal, sys, time
home = os.environ["HOME"]
def stop(*_):
    open(os.path.join(home, "job.term"), "w").write("TERM")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
info = dict(argv=sys.argv[1:], cwd=os.getcwd(), pid=os.getpid(), jax=os.environ.get("JAX_PLATFORMS"),
            greeting=os.environ.get("GREETING"), token=os.environ.get("HF_TOKEN"), key=os.environ.get("API_KEY"),
            secrets_file_left=os.path.exists(os.path.join(home, ".bitembed-train.env")))
open(os.path.join(home, "job.tmp"), "w").write(json.dumps(info))
os.rename(os.path.join(home, "job.tmp"), os.path.join(home, "job.json"))
print("fake job running", flush=True)
if os.environ.get("FAKE_JOB_WAIT"):
    time.sleep(60)
"""


@pytest.fixture
def worker_home(tmp_path):
    """A fake TPU worker home: the checkout and a venv whose `bitembed-jax` records how it was started."""
    home = tmp_path / "home"
    (home / "bitembed-jax").mkdir(parents=True)
    venv_bin = home / "bitembed-venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "bitembed-jax").write_text(FAKE_JOB.format(python=sys.executable))
    (venv_bin / "bitembed-jax").chmod(0o755)
    return home


def _on_worker(remote: str, home: Path, **env):
    """What gcloud's ssh --command does on each worker: the worker's shell runs the string from $HOME."""
    base = {"PATH": "/usr/bin:/bin", "HOME": str(home), **env}
    return subprocess.run(["bash", "-c", remote], cwd=home, env=base, capture_output=True, text=True, timeout=30)


def _wait_for(path: Path, seconds=15.0):
    end = time.time() + seconds
    while not path.exists():
        assert time.time() < end, f"{path} never appeared"
        time.sleep(0.05)


def test_run_remote_shell_background_job_and_stop(cloud, worker_home):
    (ssh,) = commands(tpu(cloud, "run", *WHERE, "--env=GREETING=a b", "--dry-run", "--", *TRAIN).stdout)
    r = _on_worker(remote_of(ssh), worker_home, FAKE_JOB_WAIT="1")
    assert r.returncode == 0 and "started train" in r.stdout, r.stderr
    _wait_for(worker_home / "job.json")
    info = json.loads((worker_home / "job.json").read_text())
    try:
        assert info["argv"] == TRAIN[1:]  # exact argv on the worker: quoting survived both shells
        assert info["cwd"] == str(worker_home / "bitembed-jax")
        assert info["jax"] == "tpu" and info["greeting"] == "a b"
        # the pid file names the job itself (not a wrapper shell), so SIGTERM reaches the train loop
        assert int((worker_home / "bitembed-logs" / "train.pid").read_text()) == info["pid"]
        _wait_for(worker_home / "bitembed-logs" / "train.log")

        again = _on_worker(remote_of(ssh), worker_home)
        assert again.returncode == 1 and "already running" in again.stderr

        (stop,) = commands(tpu(cloud, "stop", *WHERE, "--dry-run").stdout)
        r = _on_worker(remote_of(stop), worker_home)
        assert "sent SIGTERM to train" in r.stdout, r.stderr
        _wait_for(worker_home / "job.term")
    finally:
        try:
            os.kill(info["pid"], signal.SIGKILL)
        except ProcessLookupError:
            pass
    (worker_home / "bitembed-logs" / "train.pid").unlink()
    assert "train is not running" in _on_worker(remote_of(stop), worker_home).stdout


def test_run_foreground_remote_shell(cloud, worker_home):
    (ssh,) = commands(tpu(cloud, "run", *WHERE, "--foreground", "--dry-run", "--", *TRAIN).stdout)
    assert "nohup" not in remote_of(ssh)
    r = _on_worker(remote_of(ssh), worker_home)
    assert r.returncode == 0 and "fake job running" in r.stdout, r.stderr
    assert json.loads((worker_home / "job.json").read_text())["argv"] == TRAIN[1:]


FAKE_GCLOUD = """#!{python}
import os, shutil, stat, subprocess, sys
args = sys.argv[1:]
with open({calls!r}, "a") as f:
    f.write(repr(args) + "\\n")
home = os.environ["WORKER_HOME"]
if "scp" in args:  # scp gives the copy the source's mode
    src, dst = args[args.index("scp") + 1], args[args.index("scp") + 2].split(":", 1)[1]
    with open({calls!r}, "a") as f:
        f.write(f"mode {{stat.S_IMODE(os.stat(src).st_mode):o}}\\n")
    shutil.copy(src, os.path.join(home, dst))
else:  # ssh --command=...: the worker's shell runs it from $HOME
    remote = [a.split("=", 1)[1] for a in args if a.startswith("--command=")][0]
    sys.exit(subprocess.call(["bash", "-c", remote], cwd=home, env=dict(PATH="/usr/bin:/bin", HOME=home)))
"""


def test_secrets_are_masked_and_reach_the_job_only_through_a_private_file(tmp_path, worker_home):
    """--env values of *TOKEN*/*KEY*/*SECRET*/*PASSWORD* variables: never printed (dry run or not), never on
    gcloud's or the remote shell's command line (the process lists); the job gets them from a 0600 file that
    is deleted before it starts, here and on the worker."""
    bin_dir, calls = tmp_path / "gcloud_bin", tmp_path / "gcloud_calls"
    bin_dir.mkdir()
    (bin_dir / "gcloud").write_text(FAKE_GCLOUD.format(python=sys.executable, calls=str(calls)))
    (bin_dir / "gcloud").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    env.update(PATH=f"{bin_dir}:{os.environ['PATH']}", WORKER_HOME=str(worker_home), HF_TOKEN="hf_s3cr3t v")
    argv = [sys.executable, str(TPU), "run", *WHERE, "--env=HF_TOKEN", "--env=API_KEY=k3y", "--env=GREETING=hi"]
    dry = subprocess.run(argv + ["--dry-run", "--", *TRAIN], capture_output=True, text=True, cwd=ROOT, env=env,
                         timeout=30)
    assert dry.returncode == 0, dry.stderr
    assert "HF_TOKEN=*** API_KEY=***" in dry.stdout and "--env API_KEY instead" in dry.stderr
    assert not calls.exists()
    r = subprocess.run(argv + ["--", *TRAIN], capture_output=True, text=True, cwd=ROOT, env=env, timeout=30)
    assert r.returncode == 0 and "started train" in r.stdout, r.stderr
    _wait_for(worker_home / "job.json")
    info = json.loads((worker_home / "job.json").read_text())  # the fake job exits at once (no FAKE_JOB_WAIT)
    assert (info["token"], info["key"], info["greeting"]) == ("hf_s3cr3t v", "k3y", "hi")
    assert not info["secrets_file_left"] and not (worker_home / ".bitembed-train.env").exists()
    recorded = calls.read_text()
    assert "mode 600" in recorded and "GREETING=hi" in recorded
    for text in (dry.stdout, dry.stderr, r.stdout, r.stderr, recorded):
        assert "s3cr3t" not in text and "k3y" not in text
    assert not list(Path(tempfile.gettempdir()).glob("bitembed-*-train.env"))


# ---------------------------------------------------------------- bash wrappers


def _wrapper(cloud, script, *args, **env):
    return subprocess.run(["bash", str(ROOT / "launch" / script), *args], capture_output=True, text=True,
                          cwd=ROOT, env=_env(cloud, **env), timeout=60)


def test_create_v5e_256_wrapper(cloud):
    r = _wrapper(cloud, "create_v5e_256.sh", "--dry-run", "--spot", ZONE="us-west4-a", TPU_NAME="emb")
    assert r.returncode == 0, r.stderr
    create, archive, scp, ssh = commands(r.stdout)
    assert create[3:6] == ["tpu-vm", "create", "emb"] and "--spot" in create
    assert flag(create, "--accelerator-type") == "v5litepod-256"
    assert flag(create, "--version") == "v2-alpha-tpuv5-lite"
    assert archive[3] == "archive" and "--worker=all" in scp and "--worker=all" in ssh

    r = _wrapper(cloud, "create_v5e_256.sh", "--queued", ZONE="us-west4-a", TPU_NAME="emb", DRY_RUN="1")
    create, describe = commands(r.stdout)[:2]
    assert create[3:5] == ["queued-resources", "create"] and flag(create, "--node-id") == "emb"
    assert describe[3:5] == ["queued-resources", "describe"]

    r = _wrapper(cloud, "create_v5e_256.sh", "--dry-run", TPU_NAME="emb")
    assert r.returncode != 0 and "ZONE" in r.stderr


def test_multislice_wrapper(cloud):
    env = dict(ZONE="us-west4-a", TPU_NAME="ms", WORKDIR="gs://bkt/runs/ms 1", INIT_MODEL="gs://bkt/enc",
               TRAIN_FILES="gs://bkt/a.jsonl,gs://bkt/b.jsonl")
    r = _wrapper(cloud, "multislice_v5e.sh", "--dry-run", **env)
    assert r.returncode == 0, r.stderr
    cmds = commands(r.stdout)
    create, run = cmds[0], cmds[-1]
    assert flag(create, "--node-count") == "2" and flag(create, "--accelerator-type") == "v5litepod-256"
    assert run[3:6] == ["queued-resources", "ssh", "ms"] and "--node=all" in run and "--worker=all" in run
    assert shlex.join(["bitembed-jax", "train", "--config", "configs/qwen3_0p6b_pretrain.py",
                       "--workdir", "gs://bkt/runs/ms 1", "--config.init.model=gs://bkt/enc",
                       "--config.data.train_files=gs://bkt/a.jsonl,gs://bkt/b.jsonl",
                       "--config.mesh.num_slices=2"]) in remote_of(run)

    env.pop("WORKDIR")
    r = _wrapper(cloud, "multislice_v5e.sh", "--dry-run", **env)
    assert r.returncode != 0 and "WORKDIR" in r.stderr and "+ " not in r.stdout


def test_xpk_wrapper(cloud):
    env = dict(PROJECT="p", ZONE="us-west4-a", CLUSTER="c1", NUM_SLICES="2", WORKDIR="gs://bkt/runs/x",
               INIT_MODEL="gs://bkt/enc", TRAIN_FILES="gs://bkt/a.jsonl")
    (cmd,) = commands(_wrapper(cloud, "xpk_gke.sh", "--dry-run", "train", **env).stdout)
    assert cmd[:3] == ["xpk", "workload", "create"] and flag(cmd, "--cluster") == "c1"
    assert flag(cmd, "--tpu-type") == "v5litepod-256" and flag(cmd, "--num-slices") == "2"
    assert flag(cmd, "--base-docker-image") == "python:3.11" and flag(cmd, "--docker-image") is None
    inner = shlex.split(flag(cmd, "--command"))
    assert inner[inner.index("&&") + 1:] == [
        "bitembed-jax", "train", "--config", "configs/qwen3_0p6b_pretrain.py", "--workdir", "gs://bkt/runs/x",
        "--config.init.model=gs://bkt/enc", "--config.data.train_files=gs://bkt/a.jsonl",
        "--config.mesh.num_slices=2"]

    (cmd,) = commands(_wrapper(cloud, "xpk_gke.sh", "train", DRY_RUN="1", DOCKER_IMAGE="gcr.io/p/img", **env).stdout)
    assert flag(cmd, "--docker-image") == "gcr.io/p/img" and flag(cmd, "--base-docker-image") is None
    assert shlex.split(flag(cmd, "--command"))[:2] == ["bitembed-jax", "train"]

    (cmd,) = commands(_wrapper(cloud, "xpk_gke.sh", "--dry-run", "cluster", SPOT="1", **env).stdout)
    assert cmd[:3] == ["xpk", "cluster", "create"] and "--spot" in cmd and flag(cmd, "--num-slices") == "2"
    (cmd,) = commands(_wrapper(cloud, "xpk_gke.sh", "--dry-run", "delete", **env).stdout)
    assert cmd[:3] == ["xpk", "workload", "delete"] and flag(cmd, "--workload") == "bitembed-train"
    assert _wrapper(cloud, "xpk_gke.sh", "--dry-run", **env).returncode == 2
