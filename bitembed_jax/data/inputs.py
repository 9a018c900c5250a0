"""The input side of a dataset build: which files (globs, folders, local or ``gs://``), cut into chunks.

A chunk is the unit of parallel work and becomes one ArrayRecord shard per split: a byte range of a JSONL
file (it owns the lines that start inside it) or one row group of a Parquet file. Chunks depend only on the
files and ``chunk_bytes``, never on the runner or its number of workers, so neither does the built dataset.
"""
import dataclasses
import glob
import os
from typing import Sequence

from etils import epath

from bitembed_jax.data import records
from bitembed_jax.io import paths

CHUNK_BYTES = 32 << 20  # input bytes per chunk: enough chunks to balance workers, few enough shard files


@dataclasses.dataclass(frozen=True)
class Chunk:
    index: int  # position in input order: chunks are written, and read back, in this order
    path: str
    kind: str  # "jsonl" or "parquet"
    start: int  # jsonl: byte offset; parquet: row group
    stop: int  # jsonl: byte offset (exclusive); parquet: row group + 1
    first_row: int = 0  # parquet: the row index of the row group's first row, for error messages


def _is_data_file(name: str) -> bool:
    return name.endswith(records.JSONL_SUFFIXES + records.PARQUET_SUFFIXES)


def _expand_one(arg: str) -> list[str]:
    """The data files one command-line argument stands for, sorted; an error if it stands for none."""
    arg = os.fspath(arg)
    if paths.is_remote(arg):
        p = epath.Path(arg)
        if glob.has_magic(arg):
            parts = arg.split("/")
            first = next(i for i, part in enumerate(parts) if glob.has_magic(part))
            found = sorted(str(m) for m in epath.Path("/".join(parts[:first])).glob("/".join(parts[first:])))
        elif p.is_dir():
            found = sorted(str(m) for m in p.rglob("*") if _is_data_file(m.name))
        else:
            found = [arg] if p.exists() else None
    else:
        arg = os.path.abspath(arg)
        if glob.has_magic(arg):
            found = sorted(glob.glob(arg, recursive=True))
        elif os.path.isdir(arg):
            found = sorted(os.path.join(d, f) for d, _, fs in os.walk(arg) for f in fs if _is_data_file(f))
        else:
            found = [arg] if os.path.isfile(arg) else None
    if found is None:
        raise FileNotFoundError(f"input file not found: {arg}")
    found = [f for f in found if not os.path.basename(f).startswith(".")]
    if not found:
        kind = "glob" if glob.has_magic(arg) else "folder"
        raise FileNotFoundError(f"input {kind} {arg} matches no .jsonl or .parquet file")
    for f in found:
        records.file_format(f)
    return found


def expand_inputs(args: Sequence[str]) -> list[str]:
    """Files, globs and folders -> the data files, in argument order (each glob or folder sorted)."""
    if isinstance(args, (str, os.PathLike)):
        args = [args]
    if not args:
        raise ValueError("no input files given")
    out, seen = [], set()
    for arg in args:
        for f in _expand_one(arg):
            if f in seen:
                raise ValueError(f"input file {f} is named twice (by {arg})")
            seen.add(f)
            out.append(f)
    return out


def file_size(path: str) -> int:
    return epath.Path(path).stat().length if paths.is_remote(path) else os.path.getsize(path)


def _parquet_chunks(path: str, index: int) -> tuple[list[Chunk], int]:
    """One chunk per row group, and the uncompressed size (what the records will take once written)."""
    try:
        import pyarrow.parquet as pq
        with epath.Path(path).open("rb") as f:
            meta = pq.ParquetFile(f).metadata
    except ImportError as e:
        raise ImportError(f"reading {path} needs pyarrow (pip install pyarrow)") from e
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a damaged or foreign file
        raise records.RecordError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
    chunks, row = [], 0
    for g in range(meta.num_row_groups):
        chunks.append(Chunk(index + g, path, "parquet", g, g + 1, first_row=row))
        row += meta.row_group(g).num_rows
    return chunks, sum(meta.row_group(g).total_byte_size for g in range(meta.num_row_groups))


def plan_chunks(files: Sequence[str], chunk_bytes: int = CHUNK_BYTES) -> tuple[list[Chunk], int]:
    """The chunks of ``files`` in input order, and an estimate of the bytes the written records take."""
    chunks, estimate = [], 0
    for path in files:
        if records.file_format(path) == "parquet":
            more, size = _parquet_chunks(path, len(chunks))
        else:
            size = file_size(path)
            # equal parts of at most chunk_bytes: the DirectRunner hands each worker the same number of chunks,
            # so a short last chunk per file would leave one worker idle while the other finishes
            n = max(1, -(-size // chunk_bytes))
            more = [Chunk(len(chunks) + i, path, "jsonl", i * size // n, (i + 1) * size // n) for i in range(n)]
        chunks.extend(more)
        estimate += size
    return chunks, estimate
