"""Files of encoded vectors: one file (``.npy`` float32, ``.npz`` codes + scales), or, when several processes
encode a corpus, one shard per process plus a small JSON manifest that lists them in input order.

``load_embeddings`` reads any of the three back: float32 vectors as an ndarray, codes as ``StoredEmbeddings``.
A manifest's shards lie beside it; reading them one by one (``manifest["shards"][i]["file"]``) is the way to
stream a corpus larger than memory.
"""
import json
import os

import numpy as np

from bitembed_jax.quant.storage import StoredEmbeddings

MANIFEST_FORMAT = "bitembed-embeddings-manifest"
MANIFEST_VERSION = 1


def shard_rows(n: int, num_shards: int, index: int) -> tuple[int, int]:
    """[first, end) of shard ``index``: contiguous, in input order, sizes differing by at most one."""
    return index * n // num_shards, (index + 1) * n // num_shards


def shard_name(manifest_path: str, index: int, num_shards: int, suffix: str) -> str:
    stem = manifest_path[: -len(".json")] if manifest_path.endswith(".json") else manifest_path
    return f"{stem}.shard-{index:05d}-of-{num_shards:05d}{suffix}"


def save_vectors(path: str, vecs) -> None:
    """float32 (n, d) as .npy, codes (StoredEmbeddings) as .npz; the name is kept as given."""
    if isinstance(vecs, np.ndarray):
        with open(path, "wb") as f:
            np.save(f, vecs)
    else:
        vecs.save(path)


def write_manifest(path: str, shards: list[dict], precision: str, dim: int) -> None:
    """``shards``: [{"file": name relative to the manifest's folder, "rows": n}] in input order."""
    first = 0
    for s in shards:
        s["first"] = first
        first += s["rows"]
    body = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "precision": precision, "dim": dim,
            "count": first, "shards": shards}
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(body, f, indent=2)
    os.replace(tmp, path)


def read_manifest(path: str) -> dict:
    try:
        with open(path) as f:
            m = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable embeddings manifest ({e})") from None
    if m.get("format") != MANIFEST_FORMAT or m.get("version") != MANIFEST_VERSION:
        raise ValueError(f"{path}: not an embeddings manifest of version {MANIFEST_VERSION} (format "
                         f"{m.get('format')!r}, version {m.get('version')!r})")
    return m


def _load_one(path: str):
    if path.endswith(".npy"):
        return np.load(path, allow_pickle=False)
    return StoredEmbeddings.load(path)


def _concat(parts: list, path: str):
    if all(isinstance(p, np.ndarray) for p in parts):
        return np.concatenate(parts)
    scales = [p.scale for p in parts]
    if scales[0] is not None and scales[0].ndim == 0:
        if any(not np.array_equal(s, scales[0]) for s in scales):
            raise ValueError(f"{path}: shards were coded with different global scales")
        scale = scales[0]
    else:
        scale = None if scales[0] is None else np.concatenate(scales)
    first = parts[0]
    cal = first.calibration
    if any(p.calibration is not cal and (cal is None or not cal.same_as(p.calibration)) for p in parts):
        raise ValueError(f"{path}: shards were coded with different calibrations")
    return StoredEmbeddings(np.concatenate([p.codes for p in parts]), scale, first.precision, first.dim, cal)


def load_embeddings(path: str):
    """What ``bitembed-jax encode --out PATH`` wrote: a .npy, a .npz, or a .json manifest of shards."""
    if not path.endswith(".json"):
        return _load_one(path)
    m = read_manifest(path)
    folder = os.path.dirname(os.path.abspath(path))
    parts = []
    for s in m["shards"]:
        part = _load_one(os.path.join(folder, s["file"]))
        if len(part) != s["rows"]:
            raise ValueError(f"{path}: shard {s['file']} holds {len(part)} vectors, the manifest says {s['rows']}")
        parts.append(part)
    return _concat(parts, path)
