"""A pod run on one machine: several processes joined by JAX's distributed runtime (CPU collectives over gloo),
started by ``bitembed-jax local-pod``, against one process with as many devices.

Kept small (a tiny model, a few steps): each multi-process run compiles in every process. The model is the
full-precision encoder: the cross-process all-reduce sums in another order than one process does, and in a
BitNet model that can flip an int8/ternary rounding (see test_train.test_meshes_agree_bitnet); in fp the
sharding, the data split and the collectives are what is compared, to 1e-5.
"""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from flax import nnx

from bitembed_jax.config_loader import apply_overrides, load_config_file
from bitembed_jax.convert.hf_import import convert
from bitembed_jax.io.load import load_model_dir
from bitembed_jax.io.state_paths import flat_params
from bitembed_jax.train.loop import train

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 6
# contrastive pre-training with a hard negative per pair and GradCache chunks
PRETRAIN = ["--config.train.batch_size=16", f"--config.train.num_steps={STEPS}", "--config.train.log_every=1",
            "--config.train.warmup_steps=1", "--config.checkpoint.every_steps=2",
            "--config.checkpoint.async_save=False",
            "--config.data.query_max_len=48", "--config.data.passage_max_len=32", "--config.data.num_negatives=1",
            "--config.loss.num_chunks=2", "--config.init.mode=fp"]
METRICS = ("loss", "accuracy", "grad_norm")


@pytest.fixture(scope="module")
def pod(tiny_qwen3, tmp_path_factory):
    root = tmp_path_factory.mktemp("pod")
    enc = convert(tiny_qwen3, str(root / "enc"), mode="fp")
    with open(root / "pairs.jsonl", "w") as f:
        for i in range(64):
            f.write(json.dumps({"query": f"question number {i} about topic {i % 7}",
                                "positive": f"the answer to question {i} concerns topic {i % 7} and item {i}",
                                "negatives": [f"an unrelated passage {i} about {(i + 3) % 7}"]}) + "\n")
    return {"root": root, "enc": enc, "hf": tiny_qwen3, "data": str(root / "pairs.jsonl")}


def _args(pod, workdir, config="quickstart.py", *extra):
    return ["train", "--config", os.path.join(ROOT, "configs", config), "--workdir", str(workdir),
            "--init-from", pod["enc"], f"--config.data.train_files=['{pod['data']}']", *PRETRAIN, *extra]


def _local_pod(processes, devices, args, *, timeout=600, env=None, background=False, extra=()):
    cmd = [sys.executable, "-m", "bitembed_jax.cli", "local-pod", "--processes", str(processes),
           "--devices-per-process", str(devices), *extra, "--", *args]
    full_env = {**os.environ, "PYTHONPATH": ROOT, "HF_HUB_OFFLINE": "1", **(env or {})}
    if background:
        return subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    r = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout)
    return r.returncode, r.stdout + r.stderr


def _one_process(args, workdir):
    """The same command in this process, on its 8 devices: the reference."""
    cfg = load_config_file(args[2])
    cfg.init.model = args[6]
    train(apply_overrides(cfg, args[7:]), str(workdir))
    return workdir


def _rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _params(workdir):
    return flat_params(nnx.state(load_model_dir(os.path.join(workdir, "model"))[0]))


def assert_same_run(a, b):
    ra, rb = _rows(a), _rows(b)
    assert [r["step"] for r in ra] == [r["step"] for r in rb] == list(range(1, STEPS + 1))
    for x, y in zip(ra, rb):
        for k in METRICS:
            assert abs(x[k] - y[k]) <= 1e-5 * max(1.0, abs(x[k])), (x["step"], k, x[k], y[k])
    pa, pb = _params(a), _params(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        np.testing.assert_allclose(np.asarray(pa[k]), np.asarray(pb[k]), atol=1e-5, err_msg=k)


@pytest.fixture(scope="module")
def reference(pod):
    assert jax.device_count() == 8
    return _one_process(_args(pod, pod["root"] / "ref"), pod["root"] / "ref")


@pytest.fixture(scope="module")
def two_by_four(pod):
    rc, out = _local_pod(2, 4, _args(pod, pod["root"] / "2x4"))
    assert rc == 0, out
    return pod["root"] / "2x4", out


def test_two_processes_train_like_one(reference, two_by_four):
    workdir, out = two_by_four
    assert_same_run(reference, workdir)
    # metrics and the model come from process 0 only; every process finishes
    assert out.count("trained model folder") == 2 and "[1] done: model folder" not in out
    assert not [p for p in os.listdir(workdir) if p.startswith(".tmp-") or p.startswith(".dataset.tmp")]


def test_four_processes_train_like_one(pod, reference):
    rc, out = _local_pod(4, 2, _args(pod, pod["root"] / "4x2"))
    assert rc == 0, out
    assert_same_run(reference, pod["root"] / "4x2")


def test_distillation_on_two_processes_like_one(pod):
    extra = ["--teacher", pod["hf"], "--config.loss.num_chunks=1", "--config.data.num_negatives=0",
             "--config.loss.precisions.int8=0", "--config.loss.precisions.int4=0", "--config.loss.precisions.binary=0"]
    args = _args(pod, pod["root"] / "ft", "quickstart_finetune.py", *extra)
    cfg = load_config_file(args[2])
    cfg.init.model, cfg.teacher.model = pod["enc"], pod["hf"]
    ref = pod["root"] / "ft-ref"
    train(apply_overrides(cfg, [a for a in args[7:] if a not in ("--teacher", pod["hf"])]), str(ref))
    rc, out = _local_pod(2, 4, args)
    assert rc == 0, out
    assert_same_run(ref, pod["root"] / "ft")


def _wait_for(path, proc, timeout=300):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)


def _children(pid):
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(p))
            except OSError:
                pass
    return sorted(out)


def test_sigterm_then_a_lost_process_then_the_same_command_finishes_like_an_uninterrupted_run(pod, two_by_four):
    """A maintenance event (SIGTERM to every process) checkpoints all of them at one step and exits 75; kill -9
    of one process later stops the other within the heartbeat timeout, naming it; the same command then
    finishes, and the run equals the uninterrupted one."""
    workdir = pod["root"] / "interrupted"
    args = _args(pod, workdir)
    beat = {"BITEMBED_HEARTBEAT_TIMEOUT": "10"}
    proc = _local_pod(2, 4, args, background=True, env=beat, extra=("--grace", "120"))
    _wait_for(workdir / "checkpoints" / "2", proc)
    proc.send_signal(signal.SIGTERM)  # what a TPU VM gets before maintenance, forwarded to every process
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 75, out
    stops = [line.split("saved step ")[1].split(",")[0] for line in out.splitlines() if "saved step" in line]
    assert len(stops) == 1, out  # process 0 reports it; every process stopped after the same step
    step = int(stops[0])
    later = step + 2 - step % 2  # the next regular checkpoint, where the second run is cut
    assert sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())[-1] == step
    assert later < STEPS, f"stopped too late ({step}) to test a lost process after it"

    proc = _local_pod(2, 4, args, background=True, env=beat, extra=("--grace", "120"))
    _wait_for(workdir / "checkpoints" / str(later), proc)
    kids = _children(proc.pid)
    assert len(kids) == 2
    killed = time.monotonic()
    os.kill(kids[1], signal.SIGKILL)  # process 1 (started second)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0 and f"resumed from step {step}" in out
    assert "[0] error: lost process 1 of 2 (no heartbeat for 10 s)" in out, out[-3000:]
    assert "rerun the same command on every process to resume" in out
    assert time.monotonic() - killed < 60
    # quiet by default (issue 34): after the kill a few lines of ours, none of the runtime's; all of it in the log
    after = out.split("local-pod: process 1 was killed by SIGKILL; stopping the others\n", 1)[1].splitlines()
    assert len(after) <= 3 and all(line.startswith(("[0] error: ", "local-pod: ")) for line in after), after
    assert after[-1].startswith("local-pod: The last complete checkpoint is step "), after
    log = after[-1].rsplit("Full output of every process: ", 1)[1]
    assert "[Gloo]" not in out and "Traceback" not in out and "Check failure" not in out
    with open(log) as f:
        assert "[Gloo] Rank" in f.read()

    rc, out = _local_pod(2, 4, args)  # the same command again: resumes from the last complete checkpoint
    assert rc == 0, out
    assert "[0] resumed from step" in out
    assert_same_run(two_by_four[0], workdir)


def test_a_failed_dataset_build_stops_every_process_with_its_error(pod, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "positive": "p"}\n{"query": "q2"}\n')
    args = _args(pod, tmp_path / "run") + [f"--config.data.train_files=['{bad}']", "--config.data.num_negatives=0"]
    rc, out = _local_pod(2, 4, args)
    assert rc == 2, out
    assert f"[0] error: {bad}:2" in out or f"[0] error: {bad}" in out, out
    assert "[1] error: building the dataset" in out and "failed on process 0" in out, out


def test_a_bad_input_under_local_pod_is_one_line(pod, tmp_path):
    """Issue 36 row 7: a process that stops on bad input says it in one line; its peers add no traceback or
    runtime fatal error (the same line from each process at most)."""
    (tmp_path / "in.txt").write_text("one text\n")
    rc, out = _local_pod(2, 1, ["encode", "--model", pod["enc"], "--input", str(tmp_path / "in.txt"),
                                "--out", str(tmp_path / "missing" / "v.json")])
    assert rc == 2, out
    ours = [line for line in out.splitlines() if not line.startswith("local-pod: ")]
    assert ours and set(ours) <= {f"[{i}] error: --out: folder {tmp_path}/missing does not exist" for i in (0, 1)}, out
    assert out.splitlines()[-1].startswith("local-pod: Full output of every process: ")


def test_encode_on_two_processes_writes_shards_in_input_order(pod, tmp_path):
    from bitembed_jax.encode import Encoder
    from bitembed_jax.io.embeddings import load_embeddings
    from bitembed_jax.quant.storage import encode_storage

    texts = [f"text number {i} with {'more ' * (i % 5)}words" for i in range(37)]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
    want = Encoder.from_pretrained(pod["enc"]).encode(texts)
    out = tmp_path / "int8.json"
    rc, log = _local_pod(2, 4, ["encode", "--model", pod["enc"], "--input", str(tmp_path / "in.txt"),
                                "--out", str(out), "--precision", "int8"])
    assert rc == 0, log
    assert "[Gloo]" not in log  # the runtime's connection lines go to the log file only
    got = load_embeddings(str(out))
    manifest = json.loads(out.read_text())
    assert [s["rows"] for s in manifest["shards"]] == [18, 19] and manifest["count"] == 37
    ref = encode_storage(want, "int8")  # the one-process vectors, coded the same way
    assert np.abs(got.codes.astype(int) - ref.codes.astype(int)).max() <= 1  # float order only: ties
    np.testing.assert_allclose(got.scale, ref.scale, rtol=1e-5)


def test_joining_errors_are_one_line(tmp_path):
    cases = [(["--coordinator", "127.0.0.1:1234"], "needs --num-processes N and --process-id I"),
             (["--num-processes", "2", "--process-id", "0"], "need --coordinator HOST:PORT"),
             (["--coordinator", "nohost", "--num-processes", "2", "--process-id", "0"], "expected HOST:PORT"),
             (["--coordinator", "127.0.0.1:1234", "--num-processes", "2", "--process-id", "2"],
              "--process-id 2: must be in 0..1")]
    for flags, msg in cases:
        r = subprocess.run([sys.executable, "-m", "bitembed_jax.cli", "encode", "--model", str(tmp_path),
                            "--input", "x", "--out", "y.npy", *flags], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": ROOT}, timeout=120)
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr


MAKE_TINY_FAILS_ON_0 = """
import sys
import jax
from bitembed_jax.parallel.distributed import join
from bitembed_jax.train import tiny_backbone

join(sys.argv[1], 2, int(sys.argv[2]))
if jax.process_index() == 0:
    def fail(arch, folder):
        raise OSError("disk full while writing the tiny backbone")
    tiny_backbone._make_quietly = fail
try:
    tiny_backbone.make_tiny_backbone("tiny:qwen3", sys.argv[3])
except Exception as e:
    print(f"error: {e}", flush=True)
    sys.exit(2)
"""


def test_a_failed_tiny_backbone_stops_every_process_with_its_error(tmp_path):
    """Process 0 makes "tiny:ARCH" for all; if that fails, process 1 stops at once naming it (before, it
    waited at a barrier until the watchdog's timeout)."""
    from bitembed_jax.parallel.local_pod import free_port

    addr = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "PYTHONPATH": ROOT, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    procs = [subprocess.Popen([sys.executable, "-c", MAKE_TINY_FAILS_ON_0, addr, str(i), str(tmp_path)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [2, 2], outs
    assert "error: disk full while writing the tiny backbone" in outs[0], outs
    assert f"error: making the tiny backbone {tmp_path}/tiny-qwen3 failed on process 0 (of 2)" in outs[1], outs
