"""Paths that may be local or remote (``gs://...``): orbax and etils.epath handle the remote ones."""
import os

from etils import epath


def is_remote(path: str) -> bool:
    return "://" in str(path)


def absolute(path: str) -> str:
    """os.path.abspath for local paths; URLs are returned unchanged (abspath would mangle ``gs://``)."""
    return str(path) if is_remote(path) else os.path.abspath(path)


def join(path: str, *parts: str) -> str:
    return str(epath.Path(path).joinpath(*parts)) if is_remote(path) else os.path.join(path, *parts)


def exists(path: str) -> bool:
    return epath.Path(path).exists()


def write_text_atomic(path: str, text: str):
    """Local: write a sibling temp file and rename. Remote object stores make a single write atomic already."""
    if is_remote(path):
        epath.Path(path).write_text(text)
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def copy_tree(src: str, dst: str, last: str | None = None):
    """Copy a local folder to ``dst`` (local or remote) file by file; ``last`` (a file name in ``src``)
    is written after everything else, so a reader that checks for it never sees a half-copied folder."""
    files = sorted(os.path.relpath(os.path.join(d, f), src) for d, _, fs in os.walk(src) for f in fs)
    if last is not None:
        files = [f for f in files if f != last] + [last]
    for rel in files:
        target = epath.Path(dst).joinpath(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(os.path.join(src, rel), "rb") as f:
            target.write_bytes(f.read())
