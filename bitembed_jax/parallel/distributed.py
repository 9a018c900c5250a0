"""Joining a multi-process job (a pod: one process per host) and what its processes must agree on.

JAX's distributed runtime is the engine: ``join`` passes the coordinator, the number of processes and this
process's id to ``jax.distributed.initialize`` (TPU VMs and the clusters JAX detects need none of them).
``agree`` turns an error on some processes into the same error on all of them, so no process waits at a
collective for one that has already stopped. ``Watchdog`` stops this process, with a message naming the lost
one, when another process stops sending heartbeats.
"""
import os
import re
import signal
import sys
import threading
import time

import jax
import numpy as np

from bitembed_jax.parallel import runtime_output

ENV_COORDINATOR, ENV_NUM, ENV_ID = "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"
ENV_HEARTBEAT, ENV_JOIN_TIMEOUT = "BITEMBED_HEARTBEAT_TIMEOUT", "BITEMBED_JOIN_TIMEOUT"
# clusters JAX finds on its own (TPU VMs, SLURM, Open MPI): a coordinator address alone is enough there
AUTO_DETECTED = ("TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE")
DEFAULT_HEARTBEAT_S = 60
DEFAULT_JOIN_TIMEOUT_S = 120
# JAX's own join deadline, after ours: it ends the process with a C++ fatal error where ours prints one line
RUNTIME_JOIN_MARGIN_S = 60
PREFIX = "bitembed/heartbeat/"
EXIT_RESUMABLE = 75  # EX_TEMPFAIL: stopped before the end (SIGTERM, Ctrl-C, a lost host); rerun to resume


def _int(name: str, value) -> int | None:
    if value in (None, ""):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} {value!r}: expected an integer") from None


def _check_address(address: str):
    m = re.fullmatch(r"(\[[0-9a-fA-F:]+\]|[^:\s]+):(\d+)", address)
    if not m:
        raise ValueError(f"--coordinator {address!r}: expected HOST:PORT (e.g. 10.0.0.2:8476)")
    if not 0 < int(m.group(2)) < 65536:
        raise ValueError(f"--coordinator {address}: port {m.group(2)} is out of range (1..65535)")


def join_timeout(value=None) -> int:
    """Seconds a process waits to join the job (--join-timeout, else $BITEMBED_JOIN_TIMEOUT, else 120)."""
    s = _int("--join-timeout", value if value is not None else os.environ.get(ENV_JOIN_TIMEOUT))
    s = DEFAULT_JOIN_TIMEOUT_S if s is None else s
    if s < 1:
        raise ValueError(f"--join-timeout {s}: at least 1 second")
    return s


def heartbeat_timeout(value=None) -> int:
    """Seconds without a heartbeat after which another process counts as lost (--heartbeat-timeout, else
    $BITEMBED_HEARTBEAT_TIMEOUT, else 60)."""
    s = _int("--heartbeat-timeout", value if value is not None else os.environ.get(ENV_HEARTBEAT))
    s = DEFAULT_HEARTBEAT_S if s is None else s
    if s < 5:
        raise ValueError(f"--heartbeat-timeout {s}: at least 5 seconds")
    return s


def join(coordinator: str | None = None, num_processes=None, process_id=None, *, heartbeat_s=None,
         timeout_s=None) -> bool:
    """Join the job if this is one of several processes; returns whether it is.

    Values come from the arguments, else from $JAX_COORDINATOR_ADDRESS / $JAX_NUM_PROCESSES / $JAX_PROCESS_ID.
    Without any, TPU VM pods (and clusters JAX detects) still join; a single process joins nothing.
    ``timeout_s``: how long to wait for the others (``join_timeout``); past it the process stops with one line
    naming the coordinator (exit 2).
    """
    if jax.distributed.is_initialized():
        return jax.process_count() > 1
    timeout_s = join_timeout(timeout_s)
    coordinator = coordinator or os.environ.get(ENV_COORDINATOR) or None
    num = _int("--num-processes", num_processes if num_processes is not None else os.environ.get(ENV_NUM))
    pid = _int("--process-id", process_id if process_id is not None else os.environ.get(ENV_ID))
    auto = [v for v in AUTO_DETECTED if v in os.environ]
    if coordinator is None and num is None and pid is None:
        hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
        if len(hosts.split(",")) > 1 or "MEGASCALE_COORDINATOR_ADDRESS" in os.environ:
            _initialize(None, None, None, heartbeat_s, timeout_s)  # a TPU pod: JAX reads its own metadata
            return True
        return False
    if coordinator is None:
        raise ValueError("--num-processes/--process-id need --coordinator HOST:PORT (or $JAX_COORDINATOR_ADDRESS)")
    _check_address(coordinator)
    if (num is None or pid is None) and not auto:
        raise ValueError(f"--coordinator {coordinator} needs --num-processes N and --process-id I (or "
                         f"${ENV_NUM} / ${ENV_ID}): outside a TPU VM or a SLURM/MPI job nothing else says them")
    if num is not None and num < 1:
        raise ValueError(f"--num-processes {num}: at least 1")
    if num is not None and pid is not None and not 0 <= pid < num:
        raise ValueError(f"--process-id {pid}: must be in 0..{num - 1} for --num-processes {num}")
    if num == 1:
        return False
    _initialize(coordinator, num, pid, heartbeat_s, timeout_s)
    return True


def _initialize(coordinator, num, pid, heartbeat_s, timeout_s):
    # JAX's own heartbeat aborts a process whose peer died; the Watchdog's is shorter and says more
    beat = heartbeat_timeout(heartbeat_s)
    who = f"process {pid} of {num}" if pid is not None else "this process"
    where = coordinator or "the TPU pod's coordinator"
    waiting, check = (("the other processes did not all join", "check that every process was started, with the "
                       "same --coordinator and --num-processes") if pid == 0 else
                      (f"no answer from the coordinator {where}", "check that process 0 runs and that its address "
                       "and port are reachable from here"))
    # a join that never completes ends in a C++ fatal error from JAX's runtime (uncatchable): a timer stops the
    # process first, with one line; JAX's own deadline comes after it
    late = _Deadline(timeout_s, f"error: {who} could not join the job at {where} within {timeout_s} s ({waiting}); "
                                f"{check}, or raise --join-timeout (${ENV_JOIN_TIMEOUT})")
    try:
        jax.distributed.initialize(coordinator, num, pid, heartbeat_timeout_seconds=2 * beat + 30,
                                   initialization_timeout=int(timeout_s) + RUNTIME_JOIN_MARGIN_S)
    except Exception as e:  # a refused port, a duplicate process id
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{who} could not join the job at {where}: {first}") from None
    finally:
        late.cancel()


class _Deadline:
    """Print ``message`` and exit 2 unless cancelled within ``seconds`` (the wait it guards holds no lock we
    need: JAX releases the GIL while it connects)."""

    def __init__(self, seconds: float, message: str):
        self._done = threading.Event()
        self._message = message
        threading.Thread(target=self._run, args=(seconds,), name="bitembed-join-deadline", daemon=True).start()

    def _run(self, seconds: float):
        if not self._done.wait(seconds):
            sys.stderr.write(self._message + "\n")
            sys.stderr.flush()
            sys.stdout.flush()
            os._exit(2)

    def cancel(self):
        self._done.set()


def agree(error: BaseException | None, what: str):
    """Every process calls this after ``what``; if it failed on any process, it raises on all of them (the
    failing process re-raises its own error, the others a ValueError naming the process that failed)."""
    if jax.process_count() == 1:
        if error is not None:
            raise error
        return
    from jax.experimental import multihost_utils

    failed = multihost_utils.process_allgather(np.int32(error is not None))
    if error is not None:
        raise error
    bad = [int(i) for i in np.flatnonzero(np.asarray(failed))]
    if bad:
        raise ValueError(f"{what} failed on process {bad[0]} (of {jax.process_count()}); its output says why")


def any_process(flag: bool) -> bool:
    """True on every process when ``flag`` is true on at least one (e.g. a SIGTERM seen by some hosts)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.asarray(multihost_utils.process_allgather(np.int32(bool(flag)))).any())


def barrier(name: str):
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


class Watchdog:
    """Heartbeats through the coordinator's key-value store; when another process has not beaten for
    ``timeout_s`` (or the coordinator itself is gone), print one line naming it, what to resume from
    (``resume_hint()``), and exit with EXIT_RESUMABLE. Without it JAX would abort later with a C++ trace."""

    def __init__(self, timeout_s: int, resume_hint=lambda: ""):
        self.timeout_s = timeout_s
        self.resume_hint = resume_hint
        self._stop = threading.Event()
        self._thread = None

    def start(self):
        if jax.process_count() > 1:
            self._thread = threading.Thread(target=self._run, name="bitembed-watchdog", daemon=True)
            self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def settle(self):
        """A collective failed (gloo: "Connection reset by peer"): if another process is gone, the watchdog
        notices within its timeout and stops this one, naming it. Returns (for the caller to re-raise the
        error) only when every process is still beating."""
        if self._thread is not None and self._thread.is_alive():
            # a launcher that saw the peer die sends SIGTERM too; stopping silently on it would hide the verdict
            old = signal.signal(signal.SIGTERM, signal.SIG_IGN)
            try:
                self._thread.join(timeout=self.timeout_s * 1.5)
            finally:
                signal.signal(signal.SIGTERM, old)

    def _run(self):
        from jax._src import distributed

        client, me, n = distributed.global_state.client, jax.process_index(), jax.process_count()
        period = max(1.0, self.timeout_s / 6)
        last_ok = time.monotonic()
        last_seen = {p: last_ok for p in range(n) if p != me}
        beats, count = {}, 0
        while not self._stop.wait(period):
            now, count = time.monotonic(), count + 1
            try:
                client.key_value_set(f"{PREFIX}{me}", str(count), allow_overwrite=True)
                values = dict(client.key_value_dir_get(PREFIX))
                last_ok = now
            except Exception:  # the key-value store lives in process 0: gone, or unreachable for too long
                if now - last_ok > self.timeout_s:
                    self._lost(0, f"the coordinator has not answered for {self.timeout_s} s")
                continue
            for p in last_seen:
                value = values.get(f"{PREFIX}{p}")
                if value is not None and value != beats.get(p):
                    beats[p], last_seen[p] = value, now
            lost = [p for p, t in last_seen.items() if now - t > self.timeout_s]
            if lost:
                self._lost(lost[0], f"no heartbeat for {self.timeout_s} s")

    def _lost(self, process: int, why: str):
        hint = self.resume_hint()
        # on a line of its own: a progress bar may be holding the current one
        sys.stderr.write(f"\nerror: lost process {process} of {jax.process_count()} ({why}); process "
                         f"{jax.process_index()} stops too.{' ' + hint if hint else ''}{runtime_output.where()}\n")
        sys.stderr.flush()
        sys.stdout.flush()
        runtime_output.flush()
        os._exit(EXIT_RESUMABLE)
