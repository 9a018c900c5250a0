"""Pod data paths under ``local-pod``: a prepared dataset read in place (a shared folder, and a real gs:// bucket
on a local GCS emulator) with each process reading only its share, and stream mode resumed after SIGTERM.

The reads are counted by the pipeline's source (``$BITEMBED_DATA_READS``: each process writes the record
indices it read), not inferred from the code.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from bitembed_jax.convert.hf_import import convert
from bitembed_jax.data.tfds_builder import build_dataset
from tests.test_multihost import PRETRAIN, ROOT, STEPS, _local_pod, _one_process, _wait_for, assert_same_run

pytestmark = pytest.mark.slow

RECORDS = 256  # 16 global batches of 16: 6 steps and the read-ahead stay inside the first epoch
LOCAL_BATCH = 8


@pytest.fixture(scope="module")
def data_pod(tiny_qwen3, tmp_path_factory):
    root = tmp_path_factory.mktemp("data_pod")
    enc = convert(tiny_qwen3, str(root / "enc"), mode="fp")
    with open(root / "pairs.jsonl", "w") as f:
        for i in range(RECORDS):
            f.write(json.dumps({"query": f"question number {i} about topic {i % 7}",
                                "positive": f"the answer to question {i} concerns topic {i % 7} and item {i}",
                                "negatives": [f"an unrelated passage {i} about {(i + 3) % 7}"]}) + "\n")
    shared = root / "shared" / "pairs-ds"  # stands for an NFS or gcsfuse mount seen by every host
    build_dataset([str(root / "pairs.jsonl")], str(shared))
    return {"root": root, "enc": enc, "dataset": str(shared)}


def _args(data_pod, workdir, dataset_dir, *extra):
    return ["train", "--config", os.path.join(ROOT, "configs", "quickstart.py"), "--workdir", str(workdir),
            "--init-from", data_pod["enc"], *PRETRAIN, "--config.data.train_files=[]",
            f"--config.data.dataset_dir={dataset_dir}", *extra]


def _pod_env(tmp, name):
    cache, reads = tmp / f"{name}-cache", tmp / f"{name}-reads"
    return {"BITEMBED_CACHE": str(cache), "BITEMBED_DATA_READS": str(reads)}, cache, reads


def _check_shares(out, cache, reads):
    """Nothing copied to a host's cache; each process read its own half of what was read, once each."""
    assert not cache.exists() or not any(files for _, _, files in os.walk(cache)), list(os.walk(cache))
    got = [json.loads((reads / f"process-{i}.json").read_text()) for i in range(2)]
    sets = [set(g["indices"]) for g in got]
    for g, s in zip(got, sets):
        assert len(s) == g["count"], "a record was read twice"
        assert STEPS * LOCAL_BATCH <= g["count"] < RECORDS // 2, g["count"]  # its steps, plus read-ahead
        assert f"process {g['process']} of 2 read {g['count']} training records" in out
    assert not sets[0] & sets[1], "two processes read the same record"
    assert 0.4 <= got[0]["count"] / (got[0]["count"] + got[1]["count"]) <= 0.6


@pytest.fixture(scope="module")
def prepared_reference(data_pod):
    workdir = data_pod["root"] / "ref"
    return _one_process(_args(data_pod, workdir, data_pod["dataset"]), workdir)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def gcs_emulator(tmp_path):
    """A real GCS JSON API server (gcp-storage-emulator) on a free port; both client stacks pointed at it."""
    pytest.importorskip("gcp_storage_emulator")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gcp_storage_emulator", "start", "--port", str(port),
                             "--in-memory"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "the GCS emulator did not start"
            time.sleep(0.2)
    url = f"http://127.0.0.1:{port}"
    # python clients (gcsfs, google-cloud-storage) read STORAGE_EMULATOR_HOST; array_record's C++ reader
    # (riegeli over google-cloud-cpp) reads CLOUD_STORAGE_EMULATOR_ENDPOINT and ignores the other
    env = {"STORAGE_EMULATOR_HOST": url, "CLOUD_STORAGE_EMULATOR_ENDPOINT": url}
    try:
        yield env
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _upload(folder, bucket_name, prefix, env):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    os.environ.update(env)
    try:
        client = storage.Client(project="test", credentials=AnonymousCredentials())
        bucket = client.create_bucket(bucket_name)
        for name in sorted(os.listdir(folder)):
            bucket.blob(f"{prefix}/{name}").upload_from_filename(os.path.join(folder, name))
    finally:
        for k in env:
            os.environ.pop(k, None)


def test_two_processes_read_a_prepared_dataset_in_a_gcs_bucket_in_place_like_one(data_pod, prepared_reference,
                                                                                gcs_emulator, tmp_path):
    """One pod run for both promises (a pod run costs minutes): the dataset the one-process reference read from
    a shared folder, put in a bucket of a real GCS server, is read there in place by 2 processes, each its own
    half, nothing copied to a host's cache, with the reference's losses and weights."""
    _upload(data_pod["dataset"], "pairs-bucket", "datasets/pairs", gcs_emulator)
    env, cache, reads = _pod_env(tmp_path, "gcs")
    workdir = tmp_path / "2x4-gcs"
    rc, out = _local_pod(2, 4, _args(data_pod, workdir, "gs://pairs-bucket/datasets/pairs"),
                         env={**env, **gcs_emulator})
    assert rc == 0, out
    assert "reading the prepared dataset gs://pairs-bucket/datasets/pairs in place" in out
    assert "building the dataset" not in out and not os.path.exists(workdir / "dataset")
    assert_same_run(prepared_reference, workdir)
    _check_shares(out, cache, reads)


def _stream_args(data_pod, workdir):
    return ["train", "--config", os.path.join(ROOT, "configs", "quickstart.py"), "--workdir", str(workdir),
            "--init-from", data_pod["enc"], *PRETRAIN, "--config.data.mode=stream",
            "--config.data.shuffle_window=24", "--config.data.num_negatives=0"]


def test_stream_mode_trains_the_quickstart_and_resumes_after_sigterm_like_an_uninterrupted_run(data_pod):
    """The shipped sample (one file, so each of the 2 processes takes every 2nd record), read with no build."""
    full = data_pod["root"] / "stream-full"
    rc, out = _local_pod(2, 4, _stream_args(data_pod, full))
    assert rc == 0, out
    assert "streaming records 0 mod 2 of 1 file(s)" in out and "built dataset" not in out
    assert not os.path.exists(full / "dataset")

    cut = data_pod["root"] / "stream-cut"
    proc = _local_pod(2, 4, _stream_args(data_pod, cut), background=True, extra=("--grace", "120"))
    _wait_for(cut / "checkpoints" / "2", proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 75, out
    step = int([line for line in out.splitlines() if "saved step" in line][0].split("saved step ")[1].split(",")[0])
    assert step < STEPS, out
    rc, out = _local_pod(2, 4, _stream_args(data_pod, cut))
    assert rc == 0, out
    assert f"[0] resumed from step {step}" in out
    assert_same_run(full, cut)
