"""Build (once) the ArrayRecord dataset of a run and open its per-host pipeline."""
import os
import shutil

import jax

from bitembed_jax.data.pipeline import DEFAULT_QUERY_TEMPLATE, PairPipeline
from bitembed_jax.data.dataset_record import load_metadata
from bitembed_jax.data.prepared import is_prepared
from bitembed_jax.data.tfds_builder import build_dataset, needs_rebuild
from bitembed_jax.io import paths
from bitembed_jax.parallel.distributed import agree


def in_place(cfg) -> bool:
    """Whether config.data.dataset_dir holds a prepared dataset, which every host then reads where it lies."""
    return cfg.data.get("mode", "prepared") == "prepared" and is_prepared(cfg.data.dataset_dir)


def needs_local_files(cfg) -> bool:
    """Whether the training files are read as local files (to build a dataset): not when a prepared dataset is
    read in place, nor in stream mode (which opens local and gs:// files alike)."""
    return cfg.data.get("mode", "prepared") == "prepared" and not in_place(cfg)


def dataset_dir(cfg, workdir: str) -> tuple[str, bool]:
    """(where the dataset is read or built, whether every host builds its own copy).

    A prepared dataset in config.data.dataset_dir is read in place, local or ``gs://``. Otherwise the dataset is
    built: in a local (or mounted, shared) folder by process 0; for a remote place (a ``gs://`` dataset_dir
    without a dataset, or the default WORKDIR/dataset of a gs:// work dir) by every host into its own cache
    from the same files (deterministic, so all hosts hold the same records).
    """
    path = cfg.data.dataset_dir or paths.join(workdir, "dataset")
    if paths.is_remote(path) and not in_place(cfg):
        return paths.cache_path(path, "datasets"), True
    return path, False


def build_options(cfg) -> dict:
    """The dataset build's options from config.data (what a built dataset records and is checked against)."""
    max_negatives = int(cfg.data.get("max_negatives", -1))
    return {"skip_bad": cfg.data.skip_bad, "max_negatives": None if max_negatives < 0 else max_negatives,
            "validation_fraction": float(cfg.data.get("validation_fraction", 0.0)), "seed": cfg.data.seed}


def _stale(cfg, path: str) -> str | None:
    return needs_rebuild(path, list(cfg.data.train_files), **build_options(cfg))


def drop_stale_dataset(cfg, workdir: str):
    """A run started over may leave a dataset built from its earlier data files in WORKDIR/dataset: that one is
    ours to rebuild (a config.data.dataset_dir of the user's, or a per-host cache copy, is never removed)."""
    path, per_host = dataset_dir(cfg, workdir)
    if cfg.data.dataset_dir or per_host or not os.path.isdir(path):
        return
    if _stale(cfg, path):
        shutil.rmtree(path)


def ensure_dataset(cfg, workdir: str, log=print) -> str:
    """Process 0 (or each host, see dataset_dir) builds the dataset if absent; a stale one (inputs changed) is
    an error, not silently reused."""
    path, per_host = dataset_dir(cfg, workdir)
    error = None
    if in_place(cfg):
        if jax.process_index() == 0:
            try:
                _check_prepared(cfg, path, log)
            except Exception as e:  # noqa: BLE001 - re-raised by agree, on every process
                error = e
        agree(error, f"checking the dataset {path}")
        return path
    if per_host or jax.process_index() == 0:
        try:
            if per_host and not (os.path.exists(path) and os.listdir(path)):
                log(_per_host_cost(cfg, path))
            _build_or_check(cfg, path, log)
        except Exception as e:  # noqa: BLE001 - re-raised by agree, on every process
            error = e
    # the other processes wait here for process 0's build, and stop with it if it failed
    agree(error, f"building the dataset {path}")
    return path


def _per_host_cost(cfg, path: str) -> str:
    files = list(cfg.data.train_files)
    size = sum(os.path.getsize(f) for f in files if os.path.exists(f))
    return (f"building the dataset on every host ({jax.process_count()}), each into its own cache {path}: "
            f"{len(files)} training files ({size / 1e6:.1f} MB) copied to every host and the whole dataset built "
            f"by each; build it once on shared storage (bitembed-jax data build ... --out gs://...) and pass it as "
            f"config.data.dataset_dir to skip both")


def _check_prepared(cfg, path: str, log):
    """A prepared dataset is used as it is; training files named as well must be the ones it was built from."""
    meta = load_metadata(path)
    files = list(cfg.data.train_files)
    if files and not paths.is_remote(path) and not any(paths.is_remote(f) for f in files):
        reason = _stale(cfg, path)
    else:  # remote files are not downloaded to be hashed: their names must match the build's
        built = [os.path.basename(s["path"]) for s in meta["sources"]]
        reason = (f"it was built from {built}" if files and built != [os.path.basename(f) for f in files]
                  else None)
    if reason:
        raise ValueError(f"config.data.dataset_dir: {path} does not match config.data.train_files ({reason}); "
                         "leave train_files empty to train on the dataset as it is, or point dataset_dir elsewhere")
    counts = {name: s["count"] for name, s in meta["splits"].items()}
    log(f"reading the prepared dataset {path} in place ({counts['train']} pairs), each process its share")


def _build_or_check(cfg, path: str, log):
    if os.path.exists(path) and os.listdir(path):
        reason = _stale(cfg, path)
        if reason:
            raise ValueError(f"config.data.dataset_dir: {path} does not match config.data.train_files "
                             f"({reason}); remove it or point config.data.dataset_dir elsewhere")
        return
    files = list(cfg.data.train_files)
    summary = build_dataset(files, path, **build_options(cfg))
    named = ", ".join(files) if len(files) <= 3 else f"{files[0]} and {len(files) - 1} more files"
    held = summary.splits.get("validation", 0)
    log(f"built dataset {path} from {named}: {summary.count} pairs"
        + (f" ({held} held out for validation)" if held else "")
        + (f", skipped {summary.skipped} bad records: {list(summary.skip_reasons)}" if summary.skipped else ""))


def query_prefix(cfg) -> str:
    """The text put before every query, as the pipeline formats it (saved with the model for encoding)."""
    if not cfg.data.query_instruction:
        return ""
    return DEFAULT_QUERY_TEMPLATE.format(instruction=cfg.data.query_instruction, query="")


def check_instruction_fits(cfg, tokenizer, min_query_tokens: int = 8):
    """Truncation keeps the start of the text: an instruction filling query_max_len would erase every query."""
    prefix = query_prefix(cfg)
    n = len(tokenizer(prefix, add_special_tokens=True)["input_ids"]) if prefix else 0
    if n + min_query_tokens >= cfg.data.query_max_len:
        raise ValueError(f"config.data.query_instruction takes {n} tokens of config.data.query_max_len="
                         f"{cfg.data.query_max_len}, leaving fewer than {min_query_tokens} for the query itself; "
                         "shorten the instruction or raise query_max_len")


def pipeline_from_config(cfg, workdir: str, tokenizer, model_cfg, log=print):
    check_instruction_fits(cfg, tokenizer)
    if cfg.data.get("mode", "prepared") == "stream":
        return _stream_pipeline(cfg, tokenizer, model_cfg, log)
    path = ensure_dataset(cfg, workdir, log)
    return PairPipeline(
        path, tokenizer, global_batch_size=int(cfg.train.batch_size), max_query_len=int(cfg.data.query_max_len),
        max_passage_len=int(cfg.data.passage_max_len), num_negatives=int(cfg.data.num_negatives),
        seed=int(cfg.data.seed), shard_index=jax.process_index(), shard_count=jax.process_count(),
        instruction=cfg.data.query_instruction or None, add_eos=model_cfg.pooling == "last")


def _stream_pipeline(cfg, tokenizer, model_cfg, log):
    from bitembed_jax.data.stream import StreamPipeline

    pipeline = StreamPipeline(
        list(cfg.data.train_files), tokenizer, global_batch_size=int(cfg.train.batch_size),
        max_query_len=int(cfg.data.query_max_len), max_passage_len=int(cfg.data.passage_max_len),
        num_negatives=int(cfg.data.num_negatives), shuffle_window=int(cfg.data.shuffle_window),
        seed=int(cfg.data.seed), shard_index=jax.process_index(), shard_count=jax.process_count(),
        skip_bad=bool(cfg.data.skip_bad), instruction=cfg.data.query_instruction or None,
        add_eos=model_cfg.pooling == "last")
    if jax.process_index() == 0:
        log(f"{pipeline.describe()} on each of {jax.process_count()} processes (no dataset build)")
    return pipeline
