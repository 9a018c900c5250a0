"""The two jobs a build does per chunk, as plain functions of small picklable arguments: any runner calls them.

``validate_chunk`` counts a chunk's good records (the first bad one, or the skipped ones, named by file and
line); ``write_chunk`` writes them as one ArrayRecord shard per split, streaming: a worker holds one record
at a time, whatever the size of the corpus.
"""
import hashlib
import json
import os
import shutil
import tempfile
from typing import Any, Iterator

from etils import epath

from bitembed_jax.data import records
from bitembed_jax.data.inputs import Chunk
from bitembed_jax.io import paths

ARRAY_RECORD_OPTIONS = "group_size:1"  # what TFDS writes: every record readable on its own (random access)


def _open(path: str):
    return epath.Path(path).open("rb") if paths.is_remote(path) else open(path, "rb")


def _jsonl_rows(chunk: Chunk) -> Iterator[tuple[int, Any]]:
    """(byte offset, decoded record or RecordError) of the lines that start inside the chunk's byte range."""
    with _open(chunk.path) as f:
        pos = chunk.start
        if pos:
            f.seek(pos - 1)
            pos += len(f.readline()) - 1  # the rest of a line that started in the previous chunk
        while pos < chunk.stop:
            line = f.readline()
            if not line:
                break
            offset, pos = pos, pos + len(line)
            if not line.strip():
                continue  # blank lines (e.g. a trailing newline) are not records
            try:
                yield offset, json.loads(line.decode("utf-8"))
            except UnicodeDecodeError as e:
                yield offset, records.RecordError(f"not valid UTF-8 ({e.reason})")
            except json.JSONDecodeError as e:
                yield offset, records.RecordError(f"malformed JSON ({e.msg} at column {e.colno})")


def _parquet_rows(chunk: Chunk) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq
    row = chunk.first_row
    with _open(chunk.path) as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=4096, row_groups=range(chunk.start, chunk.stop)):
            for raw in batch.to_pylist():
                yield row, raw
                row += 1


def _line_number(path: str, offset: int) -> int:
    """1-based line of the byte ``offset``: counted only when an error needs it."""
    n, left = 1, offset
    with _open(path) as f:
        while left:
            block = f.read(min(left, 1 << 24))
            if not block:
                break
            n, left = n + block.count(b"\n"), left - len(block)
    return n


def where(chunk: Chunk, locator: int) -> str:
    if chunk.kind == "parquet":
        return f"{chunk.path}: row index {locator}"
    return f"{chunk.path}:{_line_number(chunk.path, locator)}"


def good_pairs(chunk: Chunk, on_bad=None) -> Iterator[records.Pair]:
    """The chunk's valid records in order; a bad one calls ``on_bad(where, reason)``, which may raise."""
    rows = _parquet_rows(chunk) if chunk.kind == "parquet" else _jsonl_rows(chunk)
    for locator, raw in rows:
        try:
            if isinstance(raw, records.RecordError):
                raise raw
            pair = records.parse_record(raw)
        except records.RecordError as e:
            if on_bad is not None:
                on_bad(where(chunk, locator), str(e))
            continue
        yield pair


class _Stop(Exception):
    pass


def validate_chunk(chunk: Chunk, skip_bad: bool) -> dict:
    """{"good": n, "skipped": m, "reasons": [...], "error": the first bad record (when not skip_bad) or None,
    and for a file's first chunk "fingerprint": the file's}."""
    out = {"index": chunk.index, "good": 0, "skipped": 0, "reasons": [], "error": None}

    def on_bad(where_: str, reason: str):
        if not skip_bad:
            out["error"] = f"{where_}: {reason}"
            raise _Stop
        out["skipped"] += 1
        if len(out["reasons"]) < records.MAX_REASONS:
            out["reasons"].append(f"{where_}: {reason}")

    try:
        for _ in good_pairs(chunk, on_bad):
            out["good"] += 1
    except _Stop:
        pass
    if chunk.start == 0:  # the file's first chunk also records its fingerprint (files are hashed in parallel)
        out["fingerprint"] = records.file_fingerprint(chunk.path)
    return out


def negatives_stats(counts: list[int]) -> dict:
    return {"count": len(counts), "without_negatives": sum(c == 0 for c in counts),
            "min_negatives": min(counts), "max_negatives": max(counts)}


class _Shard:
    """One split's ArrayRecord file of a chunk, written locally (a temp file first when the dataset is remote)
    with the sha256 of its records in order (each prefixed by its length, so record boundaries count)."""

    def __init__(self, dest: str):
        from array_record.python.array_record_module import ArrayRecordWriter

        self.dest = dest
        self.local = dest
        if paths.is_remote(dest):
            fd, self.local = tempfile.mkstemp(suffix=".array_record")
            os.close(fd)
        self.writer = ArrayRecordWriter(self.local, ARRAY_RECORD_OPTIONS)
        self.hash, self.num_bytes, self.negatives = hashlib.sha256(), 0, []

    def write(self, serialized: bytes, num_negatives: int):
        self.writer.write(serialized)
        self.hash.update(len(serialized).to_bytes(8, "little"))
        self.hash.update(serialized)
        self.num_bytes += len(serialized)
        self.negatives.append(num_negatives)

    def close(self) -> dict:
        self.writer.close()
        if self.local != self.dest:
            with open(self.local, "rb") as r, epath.Path(self.dest).open("wb") as w:
                shutil.copyfileobj(r, w, 16 << 20)
            os.remove(self.local)
        return {**negatives_stats(self.negatives), "num_bytes": self.num_bytes, "sha256": self.hash.hexdigest()}


def write_chunk(task: dict) -> dict:
    """Write the chunk's records to ``task["shards"]`` ({split: path}); ``task["validation"]`` lists the
    chunk-local indices of its held-out records. Returns per-split counts, negatives stats and digests."""
    from bitembed_jax.data.dataset_record import serialize_pair

    chunk, held_out, max_negatives = task["chunk"], set(task["validation"]), task["max_negatives"]
    shards = {split: _Shard(dest) for split, dest in task["shards"].items()}
    n = 0
    try:
        for i, pair in enumerate(good_pairs(chunk)):
            negatives = pair.negatives if max_negatives is None else pair.negatives[:max_negatives]
            shards["validation" if i in held_out else "train"].write(
                serialize_pair(pair.query, pair.positive, negatives), len(negatives))
            n = i + 1
    finally:
        stats = {split: shard.close() for split, shard in shards.items()}
    if n != task["expected"]:  # the two passes must agree, or the split assignment is meaningless
        raise RuntimeError(f"{chunk.path} changed during the build ({task['expected']} valid records in "
                           f"chunk {chunk.index}, now {n})")
    return {"index": chunk.index, "splits": stats}
