"""Quiet multi-process output: what JAX's runtime prints (gloo's "[Gloo] Rank N is connected to N peer ranks"
lines, absl log lines, a fatal error's C++ stack, a Python traceback) goes to a log file; our own lines reach the
terminal. ``--verbose`` (or ``$BITEMBED_VERBOSE=1``) shows everything.

``NoiseFilter`` decides line by line; ``local-pod`` applies it to its processes' output, and a process of a pod
started by hand applies it to its own stdout and stderr (``QuietOutput``: gloo writes to stdout, the runtime's
fatal errors to stderr, both from C++, so only the file descriptors can be filtered).
"""
import atexit
import os
import re
import sys
import tempfile
import threading
import time

ENV_VERBOSE = "BITEMBED_VERBOSE"
# anywhere in a line: C++ writes it right after a progress bar's last update, which has no line end
GLOO = re.compile(r"\[Gloo\] [^\r\n]*")
ABSL = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ \S+:\d+\] ")
FATAL = re.compile(r"^(F\d{4} \d\d:\d\d:\d\d|\*\*\* Check failure stack trace|\*\*\* SIG[A-Z]+|Fatal Python error)")
# the two lines gRPC adds to a runtime log line about a lost peer: a warning's, not only a fatal error's
GRPC_DETAIL = "Additional GRPC error information from remote target "
TRACEBACK_CONTINUED = ("Traceback (most recent call last)", "During handling of", "The above exception")


def verbose() -> bool:
    return os.environ.get(ENV_VERBOSE, "") not in ("", "0")


class NoiseFilter:
    """Whether each line of one stream reaches the terminal. After a fatal error's first line the rest of the
    stream is the runtime's (its stack trace); a Python traceback is hidden down to its last line."""

    def __init__(self):
        self.fatal = False
        self.in_traceback = False
        self.grpc_detail = False
        self.hidden = 0

    def keep(self, line: str) -> str | None:
        """What of ``line`` (with its line end) reaches the terminal: None for nothing."""
        if GLOO.search(line):
            line = GLOO.sub("", line)
            if not line.strip():
                self.hidden += 1
                return None
        text = line.rstrip("\r\n")
        fatal, detail_follows = bool(FATAL.match(text)), self.grpc_detail
        self.grpc_detail = text.startswith(GRPC_DETAIL)  # its next line is the detail itself
        hide = self.fatal or fatal or detail_follows or self.grpc_detail or bool(ABSL.match(text))
        self.fatal = self.fatal or fatal
        if text.startswith(TRACEBACK_CONTINUED[0]):
            self.in_traceback = True
        if self.in_traceback:
            hide = True
            # the exception's own line ends it: not indented, not a traceback's header
            if text and not text[0].isspace() and not text.startswith(TRACEBACK_CONTINUED):
                self.in_traceback = False
        self.hidden += hide
        return None if hide else line


def log_path(what: str) -> str:
    """A new log file's path in the temp dir's bitembed-jax-logs/ (kept after the run; named in messages)."""
    folder = os.path.join(tempfile.gettempdir(), "bitembed-jax-logs")
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{what}.log")


def split_lines(buf: bytes):
    """(complete lines with their end, the rest): a progress bar's carriage return ends a line too."""
    lines = []
    while True:
        cut = min((i for i in (buf.find(b"\n"), buf.find(b"\r")) if i >= 0), default=-1)
        if cut < 0:
            return lines, buf
        lines.append(buf[:cut + 1])
        buf = buf[cut + 1:]


class QuietOutput:
    """This process's stdout and stderr (the file descriptors) through pipes: every line to ``path``, the lines
    ``NoiseFilter`` shows to where they went before. ``close`` (at exit, or before an ``os._exit``) restores
    them and forwards what is still in the pipes."""

    def __init__(self, path: str):
        self.path = path
        self._log = open(path, "ab", buffering=0)
        self._lock = threading.Lock()
        self._streams = []
        for fd in (1, 2):
            (sys.stdout if fd == 1 else sys.stderr).flush()
            real = os.dup(fd)
            r, w = os.pipe()
            os.dup2(w, fd)
            os.close(w)
            t = threading.Thread(target=self._pump, args=(r, real), name=f"bitembed-output-{fd}", daemon=True)
            t.start()
            self._streams.append((fd, real, t))

    def _pump(self, r: int, real: int):
        noise, buf = NoiseFilter(), b""
        for chunk in iter(lambda: os.read(r, 65536), b""):
            lines, buf = split_lines(buf + chunk)
            for line in lines:
                self._forward(line, real, noise)
        if buf:
            self._forward(buf, real, noise)
        os.close(r)

    def _forward(self, line: bytes, real: int, noise: NoiseFilter):
        with self._lock:
            self._log.write(line)
        kept = noise.keep(line.decode(errors="replace"))
        if kept is not None:
            os.write(real, kept.encode())

    def close(self):
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, real, _ in self._streams:
            os.dup2(real, fd)  # closes the pipe's write end: its pump reads to the end and stops
        for _, real, t in self._streams:
            t.join(timeout=5)
            os.close(real)
        self._streams = []
        self._log.close()


_active: QuietOutput | None = None


def quiet(what: str) -> str | None:
    """Filter this process's output from now on, unless verbose; returns the log's path (None if verbose)."""
    global _active
    if verbose() or _active is not None:
        return _active and _active.path
    _active = QuietOutput(log_path(what))
    atexit.register(flush)
    return _active.path


def where() -> str:
    """" (full output: LOG)" while filtering, else ""."""
    return f" (full output: {_active.path})" if _active is not None else ""


def flush():
    """Before ``os._exit``: our last lines reach the terminal (and the log) before the process is gone."""
    global _active
    if _active is not None:
        active, _active = _active, None
        active.close()
