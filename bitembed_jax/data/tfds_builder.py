"""Turn (query, positive, negatives) JSONL/Parquet files into an ArrayRecord TFDS dataset, without TensorFlow.

The built folder holds the tfds files directly (``tfds.builder_from_directory(out_dir)`` reads it) plus
``metadata.json``: the source files' fingerprints, the build options and per-split counts, so a stale
build can be detected and the pipeline can check negatives before training starts.
"""
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import tempfile
from typing import Sequence

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core.utils import tqdm_utils
from tqdm import tqdm

from bitembed_jax.data import records
from bitembed_jax.io.paths import remove_leftovers

FORMAT = "bitembed-pairs-v1"  # marks folders this module built (and may therefore replace)
METADATA_FILE = "metadata.json"  # where tfds writes ``info.metadata``
PROGRESS_DELAY_S = 2.0  # a build that takes longer shows a progress bar of the pairs written

log = logging.getLogger(__name__)


@dataclasses.dataclass
class PairsConfig(tfds.core.BuilderConfig):
    files: tuple[str, ...] = ()
    skip_bad: bool = False
    max_negatives: int | None = None  # keep at most this many negatives per record
    validation_fraction: float = 0.0  # held out into a 'validation' split, chosen with ``seed``
    seed: int = 0

    def options(self) -> dict:
        return {"skip_bad": self.skip_bad, "max_negatives": self.max_negatives,
                "validation_fraction": self.validation_fraction, "seed": self.seed}


class TextPairs(tfds.core.GeneratorBasedBuilder):
    """Validates every input file first (nothing is written if one is bad), then writes in input order."""
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description="(query, positive passage, hard negatives) pairs for contrastive embedding training",
            features=tfds.features.FeaturesDict({
                "query": tfds.features.Text(),
                "positive": tfds.features.Text(),
                "negatives": tfds.features.Sequence(tfds.features.Text()),
            }),
            # order is randomised at read time by the pipeline; keeping file order makes builds inspectable
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        report = records.validate_files(cfg.files, skip_bad=cfg.skip_bad)
        if report.num_skipped:
            log.warning("skipped %d bad records, e.g.:\n  %s", report.num_skipped, "\n  ".join(report.reasons))
        is_val = _validation_mask(report.num_good, cfg.validation_fraction, cfg.seed)
        counts = np.asarray(report.negatives_counts)
        if cfg.max_negatives is not None:
            counts = np.minimum(counts, cfg.max_negatives)
        wanted = {"train": ~is_val, "validation": is_val} if is_val.any() else {"train": ~is_val}
        self.info.metadata.update({
            "format": FORMAT,
            "sources": [records.file_fingerprint(p) for p in cfg.files],
            "options": cfg.options(),
            "skipped": report.num_skipped,
            "skip_reasons": report.reasons,
            "splits": {name: _negatives_stats(counts[mask]) for name, mask in wanted.items()},
        })
        return {name: self._generate_examples(mask, name) for name, mask in wanted.items()}

    def _log_download_bytes(self):
        """TFDS's "Downloading and preparing dataset Unknown size ..." is about downloads; the files are local."""

    def _log_download_done(self):
        """TFDS's "Dataset ... downloaded and prepared to" names the scratch folder, renamed right after."""

    def _generate_examples(self, mask: np.ndarray, split: str):
        cfg = self.builder_config
        n = 0
        pairs = tqdm(records.iter_pairs(cfg.files, skip_bad=True), total=len(mask), delay=PROGRESS_DELAY_S,
                     desc=f"building dataset ({split})", unit=" pairs", leave=False)
        for i, pair in enumerate(pairs):
            n = i + 1
            if i < len(mask) and mask[i]:
                negatives = pair.negatives if cfg.max_negatives is None else pair.negatives[:cfg.max_negatives]
                yield i, {"query": pair.query, "positive": pair.positive, "negatives": list(negatives)}
        if n != len(mask):  # the two passes must agree, or the split assignment is meaningless
            raise RuntimeError(f"input files changed during the build ({len(mask)} valid records, now {n})")


@contextlib.contextmanager
def _quiet_tfds():
    """Without TFDS's narration of its internals: the builder config as an absl warning, and progress bars per
    split and per shuffle pass named after the scratch folder (``_generate_examples`` has one of its own)."""
    absl_log, bars = logging.getLogger("absl"), getattr(tqdm_utils, "_active", True)
    level = absl_log.level
    absl_log.setLevel(logging.ERROR)
    tfds.display_progress_bar(False)
    try:
        yield
    finally:
        absl_log.setLevel(level)
        tfds.display_progress_bar(bars)


def _validation_mask(n: int, fraction: float, seed: int) -> np.ndarray:
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {fraction}")
    mask = np.zeros(n, bool)
    if fraction > 0:
        n_val = max(1, round(fraction * n))
        if n_val >= n:
            raise ValueError(f"validation_fraction={fraction} of {n} records leaves no training records")
        mask[np.random.default_rng(seed).choice(n, n_val, replace=False)] = True
    return mask


def _negatives_stats(counts: np.ndarray) -> dict:
    return {"count": int(counts.size), "without_negatives": int((counts == 0).sum()),
            "min_negatives": int(counts.min()), "max_negatives": int(counts.max())}


@dataclasses.dataclass(frozen=True)
class BuildSummary:
    path: str
    count: int  # records written, all splits together
    splits: dict[str, int]
    skipped: int
    skip_reasons: tuple[str, ...]


def load_metadata(out_dir: str) -> dict:
    """The build record of ``out_dir``; FileNotFoundError if no dataset was built there."""
    path = os.path.join(out_dir, METADATA_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"no dataset built by build_dataset in {out_dir} (missing {METADATA_FILE})") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} was not written by build_dataset (format {meta.get('format')!r})")
    return meta


def summary_of(out_dir: str) -> BuildSummary:
    meta = load_metadata(out_dir)
    splits = {name: s["count"] for name, s in meta["splits"].items()}
    return BuildSummary(os.path.abspath(out_dir), sum(splits.values()), splits, meta["skipped"],
                        tuple(meta["skip_reasons"]))


def needs_rebuild(out_dir: str, files: Sequence[str], *, skip_bad: bool = False, max_negatives: int | None = None,
                  validation_fraction: float = 0.0, seed: int = 0) -> str | None:
    """Why ``out_dir`` does not match ``files`` and build_dataset's options, or None if it does."""
    try:
        meta = load_metadata(out_dir)
    except (FileNotFoundError, ValueError) as e:
        return str(e)
    paths = records.check_files(files)
    if [s["path"] for s in meta["sources"]] != paths:
        return "the list of input files changed"
    wanted = {"skip_bad": skip_bad, "max_negatives": max_negatives, "validation_fraction": validation_fraction,
              "seed": seed}
    if meta["options"] != wanted:
        return f"build options changed ({meta['options']} -> {wanted})"
    for old in meta["sources"]:
        st = os.stat(old["path"])
        if (st.st_size, st.st_mtime_ns) == (old["size"], old["mtime_ns"]):
            continue  # cheap check first; hash only files that look touched
        if records.file_fingerprint(old["path"])["sha256"] != old["sha256"]:
            return f"{old['path']} changed since the build"
    return None


def build_dataset(files: Sequence[str], out_dir: str, *, skip_bad: bool = False, max_negatives: int | None = None,
                  validation_fraction: float = 0.0, seed: int = 0, overwrite: bool = False) -> BuildSummary:
    """Validate ``files`` and write them as an ArrayRecord dataset into ``out_dir``.

    The build happens in a temporary sibling folder that is renamed into place at the end, so ``out_dir``
    never holds a half-written dataset (the scratch folder of a killed build is removed first). An existing
    build is replaced only with ``overwrite=True``; a folder this function did not build is never replaced.
    """
    paths = records.check_files(files)
    if max_negatives is not None and max_negatives < 0:
        raise ValueError(f"max_negatives must be >= 0, got {max_negatives}")
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and os.listdir(out_dir):
        try:
            load_metadata(out_dir)
        except (FileNotFoundError, ValueError):
            raise FileExistsError(f"{out_dir} exists and is not a dataset built by build_dataset; "
                                  "refusing to replace it") from None
        if not overwrite:
            reason = needs_rebuild(out_dir, paths, skip_bad=skip_bad, max_negatives=max_negatives,
                                   validation_fraction=validation_fraction, seed=seed)
            state = f"stale: {reason}" if reason else "up to date with these inputs"
            raise FileExistsError(f"{out_dir} already holds a built dataset ({state}); pass overwrite=True to rebuild")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    prefix = f".{os.path.basename(out_dir)}.tmp-"
    left = remove_leftovers(parent, prefix)
    if left:
        log.info("removed %s left in %s by an interrupted build", ", ".join(left), parent)
    scratch = tempfile.mkdtemp(prefix=prefix, dir=parent)
    try:
        config = PairsConfig(name="pairs", files=tuple(paths), skip_bad=skip_bad, max_negatives=max_negatives,
                             validation_fraction=validation_fraction, seed=seed)
        with _quiet_tfds():
            builder = TextPairs(data_dir=scratch, config=config, file_format="array_record")
            builder.download_and_prepare()
        if os.path.exists(out_dir):  # parked inside scratch, deleted with it once the new build is in place
            os.replace(out_dir, os.path.join(scratch, "previous"))
        os.replace(os.fspath(builder.data_dir), out_dir)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return summary_of(out_dir)
