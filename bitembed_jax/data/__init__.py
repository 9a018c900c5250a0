"""Training data: validate pair files, build ArrayRecord datasets, and stream token batches with grain.

Names are loaded lazily so that importing the package does not import tensorflow-datasets or grain.
"""
_EXPORTS = {
    "Pair": "records", "RecordError": "records", "ReadReport": "records", "iter_pairs": "records",
    "validate_files": "records",
    "BuildSummary": "tfds_builder", "build_dataset": "tfds_builder", "needs_rebuild": "tfds_builder",
    "load_metadata": "tfds_builder",
    "PairPipeline": "pipeline", "DEFAULT_QUERY_TEMPLATE": "tokenize", "Tokenize": "tokenize",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
