"""Build (once) the ArrayRecord dataset of a run and open its per-host pipeline."""
import os
import shutil

import jax

from bitembed_jax.data.pipeline import DEFAULT_QUERY_TEMPLATE, PairPipeline
from bitembed_jax.data.tfds_builder import build_dataset, needs_rebuild
from bitembed_jax.io import paths
from bitembed_jax.parallel.distributed import agree


def dataset_dir(cfg, workdir: str) -> tuple[str, bool]:
    """(where the dataset is built, whether every host builds its own copy).

    ArrayRecord is read and written as local files. A remote place (config.data.dataset_dir, or the default
    WORKDIR/dataset of a gs:// work dir) therefore stands for a local folder in each host's cache, which every
    host builds from the same files: the build is deterministic, so all hosts hold the same records.
    """
    path = cfg.data.dataset_dir or paths.join(workdir, "dataset")
    if paths.is_remote(path):
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
    if per_host or jax.process_index() == 0:
        try:
            _build_or_check(cfg, path, log)
        except Exception as e:  # noqa: BLE001 - re-raised by agree, on every process
            error = e
    # the other processes wait here for process 0's build, and stop with it if it failed
    agree(error, f"building the dataset {path}")
    return path


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


def pipeline_from_config(cfg, workdir: str, tokenizer, model_cfg, log=print) -> PairPipeline:
    check_instruction_fits(cfg, tokenizer)
    path = ensure_dataset(cfg, workdir, log)
    return PairPipeline(
        path, tokenizer, global_batch_size=int(cfg.train.batch_size), max_query_len=int(cfg.data.query_max_len),
        max_passage_len=int(cfg.data.passage_max_len), num_negatives=int(cfg.data.num_negatives),
        seed=int(cfg.data.seed), shard_index=jax.process_index(), shard_count=jax.process_count(),
        instruction=cfg.data.query_instruction or None, add_eos=model_cfg.pooling == "last")
