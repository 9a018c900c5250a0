"""Paths that may be local or remote (``gs://...``): orbax and etils.epath handle the remote ones.

What is written remotely (checkpoints, config, metrics, model folders) goes through epath/orbax. What is read
by libraries that want local files (transformers folders, the JSONL/Parquet reader, ArrayRecord) is first
copied to a per-host cache with ``local_copy``.
"""
import contextlib
import hashlib
import json
import os
import shutil
import tempfile

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


def _canonical(path: str) -> str:
    """The path compared for overlaps: symlinks resolved locally; a URL with its trailing slashes dropped."""
    return str(path).rstrip("/") if is_remote(path) else os.path.realpath(path)


def _inside(inner: str, outer: str) -> bool:
    if is_remote(inner) or is_remote(outer):
        return inner == outer or inner.startswith(outer + "/")
    return os.path.commonpath([inner, outer]) == outer


def check_apart(out_flag: str, out: str, inputs, advice: str = "write to another place"):
    """Refuse an output (``out``, given as ``out_flag``) that is, holds or lies inside one of ``inputs``:
    (flag, path as given[, what it stands for]) tuples. A training workdir stands for its model/ folder, which
    is then the input (results written beside it in the workdir are fine). Writing over an input, with
    --overwrite above all, would replace or change what the command reads. Called by every command that
    writes, before anything is read or written."""
    dst = _canonical(out)
    for flag, given, *resolved in inputs:
        read = resolved[0] if resolved and resolved[0] is not None else given
        if read is None:
            continue
        src = _canonical(read)
        if src == dst:
            raise ValueError(f"{out_flag} {out} is the input {flag} {given}; {advice}")
        if _inside(dst, src) or _inside(src, dst):
            raise ValueError(f"{out_flag} {out} overlaps the input {flag} {given}; {advice}")


def write_text_atomic(path: str, text: str):
    """Local: write a sibling temp file and rename. Remote object stores make a single write atomic already."""
    if is_remote(path):
        epath.Path(path).write_text(text)
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def current_umask() -> int:
    """The process umask, read without changing it (os.umask can only be read by setting it, which races with
    other threads creating files)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(root: str) -> None:
    """Give ``root`` and everything under it the modes a plain mkdir/open would have (0777/0666 less the
    umask): temporary folders (mkdtemp: 0700) and some writers' files (0600) would otherwise keep a model
    from a server running as another user."""
    mask = current_umask()
    os.chmod(root, 0o777 & ~mask)
    for folder, dirs, files in os.walk(root):
        for d in dirs:
            os.chmod(os.path.join(folder, d), 0o777 & ~mask)
        for f in files:
            os.chmod(os.path.join(folder, f), 0o666 & ~mask)


def replace_dir(tmp: str, out_dir: str) -> None:
    """Move the finished folder ``tmp`` to ``out_dir``; an old ``out_dir`` is moved aside first and removed only
    once the new one is in place, so a crash in between leaves one of the two, never neither."""
    old = None
    if os.path.lexists(out_dir):
        old = tempfile.mkdtemp(prefix=".old-" + os.path.basename(out_dir) + "-", dir=os.path.dirname(out_dir))
        os.rmdir(old)
        os.replace(out_dir, old)
    try:
        os.replace(tmp, out_dir)
    except BaseException:
        if old is not None:
            os.replace(old, out_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_leftovers(parent: str, prefix: str) -> list[str]:
    """Remove the folders ``parent/prefix*``: scratch space of an earlier write to the same place that was
    killed before it could clean up (writes of one place do not run concurrently). Returns their names."""
    names = [n for n in os.listdir(parent) if n.startswith(prefix)] if os.path.isdir(parent) else []
    for name in names:
        shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
    return names


@contextlib.contextmanager
def atomic_dir(out_dir: str):
    """Yield a temporary sibling of the local folder ``out_dir`` to fill; when the block ends without an
    error it gets the umask's modes and replaces ``out_dir`` (``replace_dir``); on an error it is removed.
    Callers check ``out_dir`` may be replaced (``--overwrite``) before doing the work."""
    out_dir = os.path.abspath(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    prefix = ".tmp-" + os.path.basename(out_dir) + "-"
    remove_leftovers(parent, prefix)
    tmp = tempfile.mkdtemp(prefix=prefix, dir=parent)
    try:
        yield tmp
        follow_umask(tmp)
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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


def cache_root() -> str:
    """Where remote inputs are copied on this host: $BITEMBED_CACHE, else ~/.cache/bitembed_jax."""
    return os.environ.get("BITEMBED_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "bitembed_jax")


def cache_path(path: str, kind: str) -> str:
    """The stable local place for remote ``path`` (the same on every host and every run)."""
    key = hashlib.sha256(str(path).encode()).hexdigest()[:16]
    return os.path.join(cache_root(), kind, key, epath.Path(path).name)


def _listing(src: epath.Path, rel: str = "") -> dict:
    """{relative name: size} of every file under ``src`` ({"": size} for a file); epath refuses ``**`` globs."""
    if not src.is_dir():
        return {rel: src.stat().length}
    out = {}
    for child in sorted(src.iterdir()):
        out.update(_listing(child, f"{rel}/{child.name}" if rel else child.name))
    return out


def local_copy(path: str, kind: str) -> str:
    """A local copy of a remote file or folder (``path`` itself when local), downloaded once per host.

    The copy is reused while the remote listing (names and sizes) is unchanged, and downloaded again when it
    changed, so a replaced checkpoint or data file is never silently mixed with a stale copy. The download
    goes to a temporary name and is renamed into place: a killed download is redone, not half-used.
    """
    if not is_remote(path):
        return path
    src = epath.Path(path)
    if not src.exists():
        raise FileNotFoundError(f"{path} not found")
    listing = _listing(src)
    dst = cache_path(path, kind)
    manifest = dst + ".listing.json"
    if os.path.exists(dst) and os.path.exists(manifest):
        with open(manifest) as f:
            if json.load(f) == listing:
                return dst
    tmp = dst + ".partial"
    for stale in (tmp, dst):
        if os.path.isdir(stale):
            shutil.rmtree(stale)
        elif os.path.exists(stale):
            os.remove(stale)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    for rel in listing:
        target = os.path.join(tmp, rel) if rel else tmp
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with (src.joinpath(rel) if rel else src).open("rb") as r, open(target, "wb") as w:
            shutil.copyfileobj(r, w, 16 << 20)  # streamed: model weights can be larger than memory
    os.replace(tmp, dst)
    write_text_atomic(manifest, json.dumps(listing))
    return dst
