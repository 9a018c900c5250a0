"""Build a pairs dataset: validate every input, then write it as ArrayRecord shards, on any runner.

1. The inputs are expanded (files, globs, folders) and cut into chunks (``inputs``); the destination's free
   space is checked against an estimate from the input sizes. Nothing is read yet.
2. Pass 1 (``validate_chunk`` per chunk, in parallel) counts each chunk's good records.
3. ``_plan``, once over all counts, gives every record its global index (chunk offsets from the counts), holds
   out the validation records (a seeded choice of indices) and names each chunk's shard per split; a bad
   record stops the build here, before anything is written, naming its file and line.
4. Pass 2 (``write_chunk`` per chunk, in parallel) writes the shards into a scratch folder next to the
   destination, streaming; the driver writes TFDS's files and ``metadata.json`` and renames the folder into
   place. Shard k of a split holds chunk k's records in input order, so the stored order and ``data_digest``
   do not depend on the runner or the number of workers.

On Beam the three steps are one pipeline (the plan is pass 2's side input), so its workers start once.
Memory is flat: a worker holds one record at a time, the driver a few numbers per chunk.
"""
import functools
import hashlib
import logging
import os
import shutil
import tempfile
import uuid
from typing import Sequence

import numpy as np
from etils import epath

from bitembed_jax.data import chunk_tasks, dataset_record, inputs, records
from bitembed_jax.io import paths

SPLITS = ("train", "validation")
SHARD_OVERHEAD_BYTES = 256 << 10  # an ArrayRecord file's own blocks, beyond its records (measured: <= 192 KiB)

log = logging.getLogger(__name__)


class NoSpaceError(ValueError):
    """The destination's disk cannot hold the dataset (checked before the build starts)."""


def validation_indices(n: int, fraction: float, seed: int) -> np.ndarray:
    """The sorted global indices of the held-out records: a seeded choice, whatever the runner."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {fraction}")
    if fraction == 0:
        return np.zeros(0, np.int64)
    n_val = max(1, round(fraction * n))
    if n_val >= n:
        raise ValueError(f"validation_fraction={fraction} of {n} records leaves no training records")
    return np.sort(np.random.default_rng(seed).choice(n, n_val, replace=False))


def check_free_space(out_dir: str, needed: int):
    """One line naming the place, the bytes needed and the bytes free; remote stores are not checked."""
    if paths.is_remote(out_dir):
        return
    place = out_dir
    while not os.path.exists(place):
        place = os.path.dirname(place)
    free = shutil.disk_usage(place).free
    if needed > free:
        raise NoSpaceError(f"{place}: the dataset needs about {needed} bytes ({needed / 2**30:.2f} GiB, estimated "
                           f"from the input sizes) but only {free} bytes ({free / 2**30:.2f} GiB) are free")


def check_replaceable(out_dir: str, files: Sequence[str], options: dict, overwrite: bool, flag: str):
    """An existing build is replaced only with ``overwrite``; a folder we did not build, never."""
    if not paths.exists(out_dir) or not any(epath.Path(out_dir).iterdir()):
        return
    try:
        dataset_record.load_metadata(out_dir)
    except (FileNotFoundError, ValueError):
        raise FileExistsError(f"{out_dir} exists and is not a dataset built by build_dataset; "
                              "refusing to replace it") from None
    if not overwrite:
        local = not any(paths.is_remote(f) for f in files) and not paths.is_remote(out_dir)
        reason = dataset_record.needs_rebuild(out_dir, files, **options) if local else "not compared"
        state = f"stale: {reason}" if reason else "up to date with these inputs"
        raise FileExistsError(f"{out_dir} already holds a built dataset ({state}); pass {flag} to rebuild")


def _scratch(out_dir: str) -> str:
    """A new scratch folder next to ``out_dir`` (that of a killed earlier build is removed first)."""
    parent, base = os.path.dirname(out_dir), os.path.basename(out_dir)
    prefix = f".{base}.tmp-"
    if paths.is_remote(out_dir):
        return f"{parent}/{prefix}{uuid.uuid4().hex[:8]}"
    os.makedirs(parent, exist_ok=True)
    left = paths.remove_leftovers(parent, prefix)
    if left:
        log.info("removed %s left in %s by an interrupted build", ", ".join(left), parent)
    return tempfile.mkdtemp(prefix=prefix, dir=parent)


def _remove(path: str):
    if paths.is_remote(path):
        if epath.Path(path).exists():
            epath.Path(path).rmtree()
    else:
        shutil.rmtree(path, ignore_errors=True)


def _finish(scratch: str, out_dir: str):
    if not paths.is_remote(out_dir):
        paths.follow_umask(scratch)
        paths.replace_dir(scratch, out_dir)
        return
    # an object store has no folder rename: the files are moved one by one, metadata.json last, so a reader
    # (which opens metadata.json first) never sees a half-moved dataset
    _remove(out_dir)
    names = sorted(p.name for p in epath.Path(scratch).iterdir())
    for name in sorted(names, key=lambda n: n == dataset_record.METADATA_FILE):
        (epath.Path(scratch) / name).rename(epath.Path(out_dir) / name)
    _remove(scratch)


def _plan(checked: list[dict], *, chunks, validation_fraction: float, seed: int, scratch: str,
          max_negatives) -> dict:
    """From pass 1's results (sorted by chunk): {chunk index: its write task}; raises on the first bad record in
    input order (whichever worker met it first), or when no record is valid."""
    for r in checked:
        if r["error"]:
            raise records.RecordError(r["error"])
    counts = [r["good"] for r in checked]
    if sum(counts) == 0:
        files = ", ".join(dict.fromkeys(c.path for c in chunks))
        skipped, reasons = _skips(checked)
        hint = f" ({skipped} bad records skipped, e.g. {reasons[0]})" if skipped else ""
        raise records.RecordError(f"no valid records in {files}{hint}")
    val = validation_indices(sum(counts), validation_fraction, seed)
    return {t["index"]: t for t in _write_tasks(chunks, counts, val, scratch, max_negatives)}


def _skips(checked: list[dict]) -> tuple[int, list[str]]:
    reasons = [reason for r in checked for reason in r["reasons"]][:records.MAX_REASONS]
    return sum(r["skipped"] for r in checked), reasons


def _write_tasks(chunks, counts: list[int], val: np.ndarray, scratch: str, max_negatives) -> list[dict]:
    """Each chunk's held-out records and shard file per split, numbered over the chunks that have any."""
    offsets = np.concatenate([[0], np.cumsum(counts)])
    held = [val[np.searchsorted(val, offsets[i]):np.searchsorted(val, offsets[i + 1])] - offsets[i]
            for i in range(len(chunks))]
    per_split = {"train": [c - len(h) for c, h in zip(counts, held)], "validation": [len(h) for h in held]}
    shard_of = {s: np.cumsum(np.asarray(n) > 0) - 1 for s, n in per_split.items()}
    num_shards = {s: int(np.count_nonzero(n)) for s, n in per_split.items()}
    tasks = []
    for i, chunk in enumerate(chunks):
        if not counts[i]:
            continue
        shards = {s: paths.join(scratch, dataset_record.shard_name(s, int(shard_of[s][i]), num_shards[s]))
                  for s in SPLITS if per_split[s][i]}
        tasks.append({"index": chunk.index, "chunk": chunk, "validation": held[i].tolist(), "shards": shards,
                      "max_negatives": max_negatives, "expected": counts[i]})
    return tasks


def _combine(written: list[dict]) -> tuple[dict, dict, dict, str]:
    """Shard lengths, bytes and negatives stats per split, and the digest over every shard in stored order."""
    lengths, num_bytes, stats, digest = {}, {}, {}, hashlib.sha256()
    for split in SPLITS:
        shards = [r["splits"][split] for r in written if split in r["splits"]]
        if not shards:
            continue
        lengths[split] = [s["count"] for s in shards]
        num_bytes[split] = sum(s["num_bytes"] for s in shards)
        stats[split] = {"count": sum(lengths[split]),
                        "without_negatives": sum(s["without_negatives"] for s in shards),
                        "min_negatives": min(s["min_negatives"] for s in shards),
                        "max_negatives": max(s["max_negatives"] for s in shards)}
        for s in shards:
            digest.update(f"{split} {s['count']} {s['sha256']}\n".encode())
    return lengths, num_bytes, stats, digest.hexdigest()


def build(files: Sequence[str], out_dir: str, runner, *, skip_bad: bool = False, max_negatives: int | None = None,
          validation_fraction: float = 0.0, seed: int = 0, overwrite: bool = False,
          chunk_bytes: int | None = None, overwrite_flag: str = "overwrite=True",
          say=lambda msg: None) -> dataset_record.BuildSummary:
    """Validate ``files`` (files, globs, folders; local or gs://) and write them as a dataset at ``out_dir``
    with ``runner`` (``runners.LocalRunner`` or ``runners.BeamRunner``)."""
    if max_negatives is not None and max_negatives < 0:
        raise ValueError(f"max_negatives must be >= 0, got {max_negatives}")
    validation_indices(2, validation_fraction, seed)  # the fraction's range, before any reading
    options = {"skip_bad": skip_bad, "max_negatives": max_negatives, "validation_fraction": validation_fraction,
               "seed": seed}
    chunk_bytes = chunk_bytes or inputs.CHUNK_BYTES
    given_files, files = list(files), inputs.expand_inputs(files)
    chunks, estimate = inputs.plan_chunks(files, chunk_bytes)
    out_dir = paths.absolute(out_dir).rstrip("/")
    # an --overwrite into (or around) the corpus would delete what the build reads
    given = [g for g in given_files if not any(c in g for c in "*?[")]  # folders given stay inputs as a whole
    paths.check_apart("--out", out_dir, [("FILES", f) for f in given + files], "build into another folder")
    check_replaceable(out_dir, files, options, overwrite, overwrite_flag)
    check_free_space(out_dir, estimate + SHARD_OVERHEAD_BYTES * 2 * len(chunks))
    say(f"validating, then writing {len(files)} files ({estimate / 2**20:.0f} MiB, {len(chunks)} chunks)")
    scratch = _scratch(out_dir)
    work = paths.join(scratch, "_work")
    try:
        plan = functools.partial(_plan, chunks=chunks, validation_fraction=validation_fraction, seed=seed,
                                 scratch=scratch, max_negatives=max_negatives)
        checked, written = runner.two_passes(functools.partial(chunk_tasks.validate_chunk, skip_bad=skip_bad),
                                             chunks, plan, chunk_tasks.write_chunk, work, ("validate", "write"))
        _remove(work)
        skipped, reasons = _skips(checked)
        lengths, num_bytes, stats, digest = _combine(written)
        fingerprints = [r["fingerprint"] for r in checked if r.get("fingerprint")]
        metadata = {"format": dataset_record.FORMAT, "sources": fingerprints, "options": options,
                    "skipped": skipped, "skip_reasons": reasons, "splits": stats, "data_digest": digest,
                    "chunk_bytes": chunk_bytes}
        dataset_record.write_info(scratch, lengths, num_bytes, metadata)
        _finish(scratch, out_dir)
    finally:
        _remove(scratch)
    return dataset_record.summary_of(out_dir)
