"""Read and validate (query, positive, negatives) records from local JSONL and Parquet files.

Every problem is reported with its file and location (1-based line for JSONL, 0-based row index
for Parquet), because a bad line in a multi-GB file is otherwise impossible to find.
"""
import dataclasses
import hashlib
import json
import os
from typing import Any, Iterator, Sequence

from etils import epath

JSONL_SUFFIXES = (".jsonl",)
PARQUET_SUFFIXES = (".parquet",)
MAX_REASONS = 5  # how many skip reasons a report keeps


class RecordError(ValueError):
    """A record (or file) that does not match the expected schema."""


@dataclasses.dataclass(frozen=True)
class Pair:
    query: str
    positive: str
    negatives: tuple[str, ...] = ()


@dataclasses.dataclass
class ReadReport:
    """What a full pass over the files found; ``negatives_counts[i]`` belongs to the i-th good record."""
    num_good: int = 0
    num_skipped: int = 0
    reasons: list[str] = dataclasses.field(default_factory=list)
    negatives_counts: list[int] = dataclasses.field(default_factory=list)

    def note_bad(self, reason: str) -> None:
        self.num_skipped += 1
        if len(self.reasons) < MAX_REASONS:
            self.reasons.append(reason)


def _check_text(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise RecordError(f"field {field!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise RecordError(f"field {field!r} is empty or whitespace")
    return value


def parse_record(raw: Any) -> Pair:
    """Validate one decoded record; extra fields (e.g. "answer", "source") are ignored."""
    if not isinstance(raw, dict):
        raise RecordError(f"expected an object with 'query' and 'positive', got {type(raw).__name__}")
    for field in ("query", "positive"):
        if raw.get(field) is None:
            raise RecordError(f"missing field {field!r}")
    negatives = raw.get("negatives")
    if negatives is None:  # absent, or a Parquet null
        negatives = []
    if not isinstance(negatives, (list, tuple)):
        raise RecordError(f"field 'negatives' must be a list of strings, got {type(negatives).__name__}")
    negs = tuple(_check_text(n, f"negatives[{i}]") for i, n in enumerate(negatives))
    return Pair(_check_text(raw["query"], "query"), _check_text(raw["positive"], "positive"), negs)


def _jsonl_rows(path: str) -> Iterator[tuple[str, Any]]:
    # bytes, decoded per line, so a bad encoding is reported with its line number
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            where = f"{path}:{lineno}"
            if not line.strip():
                continue  # blank lines (e.g. a trailing newline) are not records
            try:
                yield where, json.loads(line.decode("utf-8"))
            except UnicodeDecodeError as e:
                yield where, RecordError(f"not valid UTF-8 ({e.reason})")
            except json.JSONDecodeError as e:
                yield where, RecordError(f"malformed JSON ({e.msg} at column {e.colno})")


def _parquet_rows(path: str) -> Iterator[tuple[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:  # optional dependency: only Parquet inputs need it
        raise ImportError(f"reading {path} needs pyarrow (pip install pyarrow)") from e
    row = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
        for raw in batch.to_pylist():
            yield f"{path}: row index {row}", raw
            row += 1


def file_format(path: str) -> str:
    if path.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if path.endswith(PARQUET_SUFFIXES):
        return "parquet"
    raise ValueError(f"{path}: unsupported file type; expected one of {JSONL_SUFFIXES + PARQUET_SUFFIXES}")


def check_files(files: Sequence[str]) -> list[str]:
    """Absolute paths of ``files``; fails before any reading if one is missing or of an unknown type."""
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    if not files:
        raise ValueError("no input files given")
    paths = [os.path.abspath(os.fspath(p)) for p in files]
    for p in paths:
        if not os.path.isfile(p):
            raise FileNotFoundError(f"input file not found: {p}")
        file_format(p)
    return paths


def iter_pairs(files: Sequence[str], *, skip_bad: bool = False, report: ReadReport | None = None) -> Iterator[Pair]:
    """Yield the valid records of ``files`` in order; a bad one raises RecordError unless ``skip_bad``."""
    for path in check_files(files):
        rows = _jsonl_rows(path) if file_format(path) == "jsonl" else _parquet_rows(path)
        for where, raw in rows:
            try:
                if isinstance(raw, RecordError):
                    raise raw
                pair = parse_record(raw)
            except RecordError as e:
                if not skip_bad:
                    raise RecordError(f"{where}: {e}") from None
                if report is not None:
                    report.note_bad(f"{where}: {e}")
                continue
            if report is not None:
                report.num_good += 1
                report.negatives_counts.append(len(pair.negatives))
            yield pair


def validate_files(files: Sequence[str], *, skip_bad: bool = False) -> ReadReport:
    """One full pass: raises on the first bad record (unless ``skip_bad``) or if no record is good."""
    report = ReadReport()
    for _ in iter_pairs(files, skip_bad=skip_bad, report=report):
        pass
    if report.num_good == 0:
        hint = f" ({report.num_skipped} bad records skipped, e.g. {report.reasons[0]})" if report.num_skipped else ""
        raise RecordError(f"no valid records in {', '.join(check_files(files))}{hint}")
    return report


def file_fingerprint(path: str) -> dict:
    """Size, mtime and content hash, recorded with a built dataset so a stale build can be detected
    (a ``gs://`` file too, read through etils.epath)."""
    remote = "://" in str(path)
    digest = hashlib.sha256()
    with (epath.Path(path).open("rb") if remote else open(path, "rb")) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if remote:
        st = epath.Path(path).stat()
        return {"path": str(path), "size": st.length, "mtime_ns": int(st.mtime * 1e9), "sha256": digest.hexdigest()}
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "sha256": digest.hexdigest()}
