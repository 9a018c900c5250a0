"""kill -9 after a checkpoint, restart the same command: the loss sequence equals an uninterrupted run's."""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from bitembed_jax.convert.hf_import import convert

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 8


@pytest.fixture(scope="module")
def bitnet_dir(tiny_qwen3, tmp_path_factory):
    return convert(tiny_qwen3, str(tmp_path_factory.mktemp("enc") / "bitnet"), mode="bitnet")


def command(model_dir, workdir):
    return [sys.executable, "-m", "bitembed_jax.cli", "train",
            "--config", os.path.join(ROOT, "configs", "quickstart.py"),
            "--workdir", workdir, "--init-from", model_dir, "--config.train.batch_size=16",
            f"--config.train.num_steps={STEPS}", "--config.train.log_every=1", "--config.checkpoint.every_steps=3",
            "--config.mesh.data=8"]


def env():
    e = dict(os.environ)
    e["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    return e


def losses(workdir):
    rows = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            rows[r["step"]] = r["loss"]
    return rows


def finished_steps(workdir):
    d = os.path.join(workdir, "checkpoints")
    return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


@pytest.fixture(scope="module")
def finished_run(bitnet_dir, tmp_path_factory):
    """An uninterrupted run (the reference) and the seconds its command took."""
    ref = str(tmp_path_factory.mktemp("finished") / "ref")
    start = time.monotonic()
    subprocess.run(command(bitnet_dir, ref), check=True, env=env(), cwd=ROOT, capture_output=True)
    return ref, time.monotonic() - start


def _hashes(folder):
    out = {}
    for d, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(d, name), "rb") as f:
                out[os.path.relpath(os.path.join(d, name), folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


def test_a_finished_run_keeps_its_last_step_and_a_rerun_does_nothing_unless_num_steps_grew(bitnet_dir, finished_run,
                                                                                          tmp_path, capsys):
    """The last step (8, not a multiple of every_steps=3) is checkpointed; the same command again says the run is
    finished and returns before loading or compiling anything, leaving model/ byte-identical; with more steps
    it trains on from that last checkpoint."""
    ref, first_s = finished_run
    assert finished_steps(ref)[-1] == STEPS
    model, metrics = _hashes(os.path.join(ref, "model")), _hashes(ref)["metrics.jsonl"]
    start = time.monotonic()
    r = subprocess.run(command(bitnet_dir, ref), env=env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    rerun_s = time.monotonic() - start
    assert r.returncode == 0, r.stderr
    assert f"{ref}: this run already finished at step {STEPS}" in r.stdout and "compiling" not in r.stdout + r.stderr
    assert _hashes(os.path.join(ref, "model")) == model and _hashes(ref)["metrics.jsonl"] == metrics
    assert rerun_s < first_s, (rerun_s, first_s)  # no dataset check, no model load, no compile
    grown = str(tmp_path / "grown")
    shutil.copytree(ref, grown)
    from bitembed_jax.cli import main  # in this process (8 CPU devices too): one jax import fewer

    assert main(command(bitnet_dir, grown)[3:] + [f"--config.train.num_steps={STEPS + 1}"]) == 0
    assert f"resumed from step {STEPS}" in "".join(capsys.readouterr()) and finished_steps(grown)[-1] == STEPS + 1
    with open(os.path.join(grown, "model", "bitembed_config.json")) as f:
        meta = json.load(f)
    assert meta["train"]["steps"] == STEPS + 1 and meta["started_from"] == bitnet_dir


def test_sigkill_and_resume_same_losses(bitnet_dir, finished_run, tmp_path):
    ref = finished_run[0]
    wd = str(tmp_path / "killed")
    proc = subprocess.Popen(command(bitnet_dir, wd), env=env(), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not finished_steps(wd) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = finished_steps(wd)
    assert saved and saved[-1] < STEPS, f"killed too late to test resumption: {saved}"
    subprocess.run(command(bitnet_dir, wd), check=True, env=env(), cwd=ROOT, capture_output=True)
    want, got = losses(ref), losses(wd)
    with open(os.path.join(wd, "metrics.jsonl")) as f:  # the rows past the restored step are not repeated
        assert [json.loads(line)["step"] for line in f] == list(range(1, STEPS + 1))
    assert [got[s] for s in range(saved[-1] + 1, STEPS + 1)] == [want[s] for s in range(saved[-1] + 1, STEPS + 1)]
    assert os.path.exists(os.path.join(wd, "model", "bitembed_config.json"))


def _stop_with(bitnet_dir, wd, signals):
    """Start a long run, send ``signals`` once its first metrics row exists, each after the run acknowledged the
    one before on stderr; (returncode, stdout, stderr)."""
    cmd = command(bitnet_dir, wd) + ["--config.train.num_steps=400", "--config.checkpoint.every_steps=1000"]
    proc = subprocess.Popen(cmd, env=env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = os.path.join(wd, "metrics.jsonl")
    deadline = time.time() + 300
    while (not os.path.exists(metrics) or os.path.getsize(metrics) == 0) and time.time() < deadline:
        time.sleep(0.05)
    seen = []
    for i, sig in enumerate(signals):
        proc.send_signal(sig)
        if i + 1 < len(signals):
            for line in proc.stderr:
                seen.append(line)
                if "stopping after the current step" in line:
                    break
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, "".join(seen) + err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_a_first_ctrl_c_saves_and_stops_resumably(bitnet_dir, tmp_path, sig):
    """Stopped before the end is not finished: exit 75 (documented), so `&&` chains and schedulers see it."""
    wd = str(tmp_path / "stopped")
    rc, out, err = _stop_with(bitnet_dir, wd, [sig])
    assert rc == 75, err[-2000:]
    name = signal.Signals(sig).name
    saved = finished_steps(wd)
    assert saved and saved[-1] < 400 and f"{name}: saved step {saved[-1]}, stopping" in out
    assert err.count(f"{name}: stopping after the current step and its checkpoint") == 1
    assert "Traceback" not in err


def test_a_second_ctrl_c_aborts_at_once_without_a_traceback(monkeypatch, capsys):
    """The handler itself (a subprocess test raced the run's own stop): the first Ctrl-C asks for a checkpoint
    and a stop, the second leaves at once with 130 and one line, whatever the loop is doing."""
    from bitembed_jax.train import loop

    exits = []
    monkeypatch.setattr(loop.os, "_exit", lambda rc: exits.append(rc))
    interrupts = loop.Interrupts()
    try:
        interrupts._handle(signal.SIGINT, None)
        assert interrupts.requested == "SIGINT" and exits == []
        interrupts._handle(signal.SIGINT, None)
    finally:
        interrupts.restore()
    assert exits == [130]
    err = capsys.readouterr().err
    assert "SIGINT: stopping after the current step and its checkpoint (Ctrl-C again to abort" in err
    assert "aborted (second Ctrl-C): nothing saved since the last checkpoint" in err
