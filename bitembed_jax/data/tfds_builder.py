"""Turn (query, positive, negatives) JSONL/Parquet files into an ArrayRecord TFDS dataset, without TensorFlow.

The built folder holds the tfds files directly (``tfds.builder_from_directory(out_dir)`` reads it) plus
``metadata.json``: the source files' fingerprints, the build options, per-split counts and ``data_digest``,
so a stale build can be detected and the pipeline can check negatives before training starts.

``build_dataset`` is the in-process build of a training run's dataset: the same chunked, streaming writer as
``bitembed-jax data build`` (``build.build``), run in this process instead of on Beam workers. Its memory does
not grow with the corpus (TFDS's own writer kept up to 1 GB of records and then needed TensorFlow to spill).
"""
from typing import Sequence

from bitembed_jax.data import build, runners
from bitembed_jax.data.dataset_record import (FORMAT, METADATA_FILE, BuildSummary, load_metadata, needs_rebuild,
                                              summary_of)

__all__ = ["FORMAT", "METADATA_FILE", "BuildSummary", "build_dataset", "load_metadata", "needs_rebuild",
           "summary_of"]

PROGRESS_DELAY_S = 2.0  # a build that takes longer shows a progress bar of the chunks written


def build_dataset(files: Sequence[str], out_dir: str, *, skip_bad: bool = False, max_negatives: int | None = None,
                  validation_fraction: float = 0.0, seed: int = 0, overwrite: bool = False) -> BuildSummary:
    """Validate ``files`` and write them as an ArrayRecord dataset into ``out_dir``.

    The build happens in a temporary sibling folder that is renamed into place at the end, so ``out_dir``
    never holds a half-written dataset (the scratch folder of a killed build is removed first). An existing
    build is replaced only with ``overwrite=True``; a folder this function did not build is never replaced.
    """
    return build.build(files, out_dir, runners.LocalRunner(PROGRESS_DELAY_S), skip_bad=skip_bad,
                       max_negatives=max_negatives, validation_fraction=validation_fraction, seed=seed,
                       overwrite=overwrite)
