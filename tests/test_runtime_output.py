"""Quiet multi-process output (issue 34 item 4): the runtime's lines go to a log file, ours to the terminal."""
import os
import subprocess
import sys

from bitembed_jax.parallel.runtime_output import NoiseFilter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

RUNTIME_FATAL = """\
E1205 19:09:14.369202   15984 coordination_service_agent.cc:289] Polled an error from coordination service.
F1205 19:09:14.369246   15984 client.h:80] Terminating process because the JAX distributed service detected fatal.
Additional GRPC error information from remote target coordination_service:
:UNKNOWN:Error received from peer  {grpc_message:"Socket closed", grpc_status:14}
*** Check failure stack trace: ***
    @     0x7f0560540634  absl::lts_20260107::log_internal::LogMessage::SendToLog()
"""
RUNTIME_WARNING = """\
W1205 22:27:16.247878   20339 preemption_sync_manager.cc:147] Failed to retrieve preemption notice: UNAVAILABLE
Additional GRPC error information from remote target coordination_service while calling /xla.Coordination/GetKeyValue:
:UNKNOWN:Error received from peer  {grpc_message:"Socket closed", grpc_status:14}. This is only expected if one of
"""
TRACEBACK = """\
Traceback (most recent call last):
  File "x.py", line 1, in <module>
    f()
jaxlib.XlaRuntimeError: INTERNAL: gloo: Connection reset by peer
"""


def test_the_filter_keeps_our_lines_and_drops_the_runtimes():
    noise = NoiseFilter()
    lines = ["[Gloo] Rank 0 is connected to 1 peer ranks. Expected number of connected peer ranks is : 1\n",
             "built dataset /w/dataset from pairs.jsonl: 64 pairs\n", *RUNTIME_WARNING.splitlines(True),
             *TRACEBACK.splitlines(True),
             "error: lost process 1 of 2 (no heartbeat for 10 s)\n", *RUNTIME_FATAL.splitlines(True),
             "error: anything after a fatal error is the runtime's\n"]
    shown = [noise.keep(line) for line in lines]
    assert [line for line in shown if line is not None] == ["built dataset /w/dataset from pairs.jsonl: 64 pairs\n",
                                                            "error: lost process 1 of 2 (no heartbeat for 10 s)\n"]
    assert noise.hidden == len(lines) - 2
    # C++ writes gloo's line right after a progress bar's last update (no line end between them)
    bar = "train:   0%|  | 0/6 [00:00<?, ?it/s]"
    assert NoiseFilter().keep(f"{bar}[Gloo] Rank 0 is connected to 7 peer ranks. Expected number of connected "
                              f"peer ranks is : 7\n") == f"{bar}\n"


QUIET_PROCESS = """
import os, sys
from bitembed_jax.parallel import runtime_output
path = runtime_output.quiet("test")
print("[Gloo] Rank 1 is connected to 1 peer ranks. Expected number of connected peer ranks is : 1", flush=True)
os.write(1, b"[Gloo] Rank 1 is connected to 3 peer ranks (from C++: the file descriptor itself)\\n")
print("ours on stdout", flush=True)
os.write(2, b"W1205 19:09:14.850161   16002 preemption_notifier.cc:90] SIGTERM caught\\n")
print("error: ours on stderr" + runtime_output.where(), file=sys.stderr, flush=True)
runtime_output.flush()
os._exit(3)  # as the watchdog leaves: what was said before it still arrives
"""


def test_a_process_filters_its_own_file_descriptors_and_logs_everything(tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT, "TMPDIR": str(tmp_path)}
    env.pop("BITEMBED_VERBOSE", None)
    r = subprocess.run([sys.executable, "-c", QUIET_PROCESS], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 3
    assert r.stdout == "ours on stdout\n"
    logs = os.listdir(tmp_path / "bitembed-jax-logs")
    assert len(logs) == 1
    log = str(tmp_path / "bitembed-jax-logs" / logs[0])
    assert r.stderr == f"error: ours on stderr (full output: {log})\n"
    with open(log) as f:
        text = f.read()
    assert text.count("[Gloo] Rank 1") == 2 and "SIGTERM caught" in text and "ours on stdout" in text
    r = subprocess.run([sys.executable, "-c", QUIET_PROCESS], env={**env, "BITEMBED_VERBOSE": "1"},
                       capture_output=True, text=True, timeout=60)
    assert r.stdout.count("[Gloo]") == 2 and "SIGTERM caught" in r.stderr  # --verbose: everything, as before
