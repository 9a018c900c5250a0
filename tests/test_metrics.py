"""A resumed run's curves: metrics.jsonl and TensorBoard show each step once."""
import glob
import json
import os
import struct

from tensorboardX.proto.event_pb2 import Event, SessionLog

from bitembed_jax.train.metrics import MetricsWriter


def read_events(path: str):
    """The Event records of one TFRecord event file (length, crc, payload, crc)."""
    with open(path, "rb") as f:
        data = f.read()
    pos = 0
    while pos < len(data):
        (n,) = struct.unpack("<Q", data[pos:pos + 8])
        yield Event.FromString(data[pos + 12:pos + 12 + n])
        pos += 12 + n + 4


def tensorboard_view(logdir: str) -> dict[str, list[int]]:
    """The steps TensorBoard shows per tag: its event files in name (time) order, where a SessionLog START at
    step S hides every earlier event of step >= S (TensorBoard's purge rule; tensorboard is not a dependency)."""
    steps: dict[str, list[int]] = {}
    for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
        for e in read_events(path):
            if e.HasField("session_log") and e.session_log.status == SessionLog.START:
                steps = {tag: [s for s in seen if s < e.step] for tag, seen in steps.items()}
            for v in e.summary.value:
                steps.setdefault(v.tag, []).append(e.step)
    return steps


def jsonl_steps(workdir) -> list[int]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line)["step"] for line in f]


def run(workdir, start: int, stop: int, total: int = 10):
    w = MetricsWriter(str(workdir), total, start, enabled=True)
    for step in range(start + 1, stop + 1):
        w.write(step, {"loss": 1.0 / step})
    w.close()


def test_resume_drops_the_rows_and_events_past_the_restored_step(tmp_path, monkeypatch):
    run(tmp_path, 0, 7)  # killed after step 7; its last checkpoint was step 4
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 8, "lo')  # a row torn by the kill
    monkeypatch.setattr("time.time", lambda: 4e9)  # the resumed run's event file sorts after the first one
    run(tmp_path, 4, 10)
    assert jsonl_steps(tmp_path) == list(range(1, 11))
    assert len(glob.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*"))) == 2
    assert tensorboard_view(str(tmp_path / "tensorboard")) == {"loss": list(range(1, 11))}


def test_a_fresh_run_purges_nothing(tmp_path):
    run(tmp_path, 0, 3)
    assert jsonl_steps(tmp_path) == [1, 2, 3]
    (path,) = glob.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*"))
    assert not any(e.HasField("session_log") for e in read_events(path))
