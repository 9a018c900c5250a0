"""Streaming mode's inputs: files, globs and folders of JSONL/Parquet (local or ``gs://``), and one file's
records as a grain IterDataset whose iterator state is a position in the file (a byte offset for JSONL, a
row group and row for Parquet), so a restored iterator seeks there instead of reading the file again.
"""
import glob as globlib
import json
import os
import threading

import numpy as np
from etils import epath
from grain import DatasetIterator, IterDataset

from bitembed_jax.data import records
from bitembed_jax.io import paths

SUFFIXES = records.JSONL_SUFFIXES + records.PARQUET_SUFFIXES


def _glob(pattern: str) -> list[str]:
    if paths.is_remote(pattern):
        first = min(i for i in (pattern.find(c) for c in "*?[") if i >= 0)
        root = pattern[:first].rsplit("/", 1)[0]  # the folder above the first wildcard: listed once
        return sorted(str(p) for p in epath.Path(root).glob(pattern[len(root) + 1:]))
    return sorted(globlib.glob(pattern, recursive=True))


def _walk(folder: epath.Path) -> list[str]:
    """Every file under ``folder`` (epath refuses ``rglob`` on GCS, where it lists the whole tree anyway)."""
    out = []
    for child in folder.iterdir():
        out.extend(_walk(child) if child.is_dir() else [str(child)])
    return out


def expand_inputs(specs) -> list[str]:
    """Files, globs (``data/*.jsonl``, ``gs://b/d/**/*.parquet``) and folders (their .jsonl/.parquet files,
    recursively) -> a sorted list of files; each spec that names nothing is a one-line error."""
    out = []
    for spec in ([specs] if isinstance(specs, str) else list(specs)):
        spec = str(spec)
        if any(c in spec for c in "*?["):
            found = [f for f in _glob(spec) if f.endswith(SUFFIXES)]
            if not found:
                raise FileNotFoundError(f"config.data.train_files: {spec} matches no .jsonl/.parquet file")
        elif epath.Path(spec).is_dir():
            found = sorted(f for f in _walk(epath.Path(spec)) if f.endswith(SUFFIXES))
            if not found:
                raise FileNotFoundError(f"config.data.train_files: the folder {spec} holds no .jsonl/.parquet file")
        elif epath.Path(spec).exists():
            records.file_format(spec)
            found = [spec]
        else:
            raise FileNotFoundError(f"config.data.train_files: {spec} not found")
        out.extend(found if paths.is_remote(spec) else [os.path.abspath(f) for f in found])
    return out


class Counter:
    """Records read by this process (grain's interleave reads files in threads)."""

    def __init__(self):
        self.count, self._lock = 0, threading.Lock()

    def add(self, n: int):
        with self._lock:
            self.count += n


class _Records(DatasetIterator):
    """The records of one file, from a position; yields (where, raw record, record index in the file)."""

    def __init__(self, path: str, state: dict | None = None):
        super().__init__()
        self._path, self._jsonl = path, records.file_format(path) == "jsonl"
        self._file = epath.Path(path).open("rb")
        self._state = dict(state or {"offset": 0, "line": 0, "row_group": 0, "row": 0, "record": 0})
        if self._jsonl:
            self._file.seek(self._state["offset"])
        else:
            import pyarrow.parquet as pq

            self._pq = pq.ParquetFile(self._file)
            self._rows = None

    def __next__(self):
        return self._next_jsonl() if self._jsonl else self._next_parquet()

    def _next_jsonl(self):
        while True:
            line = self._file.readline()
            if not line:
                raise StopIteration
            self._state["offset"] += len(line)
            self._state["line"] += 1
            if line.strip():  # blank lines are not records (as in records.py)
                break
        n = self._state["record"]
        self._state["record"] += 1
        where = f"{self._path}:{self._state['line']}"
        try:
            raw = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raw = records.RecordError(f"malformed record ({e})")
        return where, raw, n

    def _next_parquet(self):
        s = self._state
        while True:
            if s["row_group"] >= self._pq.num_row_groups:
                raise StopIteration
            if self._rows is None:
                self._rows = self._pq.read_row_group(s["row_group"]).to_pylist()
            if s["row"] < len(self._rows):
                break
            s["row_group"], s["row"], self._rows = s["row_group"] + 1, 0, None
        raw, n = self._rows[s["row"]], s["record"]
        s["row"] += 1
        s["record"] += 1
        return f"{self._path}: row index {n}", raw, n

    def close(self):
        self._file.close()  # gcsfs's read-ahead tasks end with it, not at interpreter shutdown
        super().close()

    def get_state(self):
        return dict(self._state)

    def set_state(self, state):
        self._file.close()
        self.__init__(self._path, state)


class _Pairs(DatasetIterator):
    """Validated pairs of one file, record stride applied, negatives chosen per (seed, epoch, file, record)."""

    def __init__(self, ds: "FilePairs"):
        super().__init__()
        self._ds = ds
        self._records = _Records(ds.path)

    def __next__(self) -> dict:
        d = self._ds
        while True:
            where, raw, n = next(self._records)
            if n % d.stride[1] != d.stride[0]:
                continue
            try:
                if isinstance(raw, records.RecordError):
                    raise raw
                pair = records.parse_record(raw)
                if d.num_negatives and not pair.negatives:
                    raise records.RecordError(f"no negatives, but config.data.num_negatives={d.num_negatives} "
                                              "(use 0 for in-batch negatives only)")
            except records.RecordError as e:
                if d.skip_bad:
                    continue
                raise records.RecordError(f"{where}: {e}") from None
            d.counter.add(1)
            out = {"query": pair.query, "positive": pair.positive}
            if d.num_negatives:
                order = np.random.default_rng([d.seed, d.epoch, d.file_id, n]).permutation(len(pair.negatives))
                out["negatives"] = [pair.negatives[order[i % len(order)]] for i in range(d.num_negatives)]
            return out

    def close(self):
        self._records.close()
        super().close()

    def get_state(self):
        return self._records.get_state()

    def set_state(self, state):
        self._records.close()
        self._records = _Records(self._ds.path, state)


class FilePairs(IterDataset):
    """One file's pairs for this process: every record (``stride=(0, 1)``) or those with index % n == i."""

    def __init__(self, path: str, *, file_id: int, epoch: int, seed: int, stride: tuple[int, int],
                 num_negatives: int, skip_bad: bool, counter: "Counter"):
        super().__init__()
        self.path, self.file_id, self.epoch, self.seed, self.stride = path, file_id, epoch, seed, stride
        self.num_negatives, self.skip_bad, self.counter = num_negatives, skip_bad, counter

    def __iter__(self) -> DatasetIterator:
        return _Pairs(self)
