"""config.init.model "tiny:ARCH", the quickstart's backbone: a tiny random Hugging Face model (what
``bitembed-jax make-tiny`` writes) made in the work dir on first use, so that
``bitembed-jax train --config configs/quickstart.py --workdir DIR`` needs nothing else. Training converts it
to the student config.init describes, as for any HF folder."""
import os

import jax

from bitembed_jax.choices import ARCHS
from bitembed_jax.io import paths
from bitembed_jax.parallel.distributed import agree

PREFIX = "tiny:"


def tiny_arch(model: str) -> str | None:
    """The ARCH of "tiny:ARCH" (an unknown one is an error naming the key), None for any other value."""
    if not model.startswith(PREFIX):
        return None
    arch = model[len(PREFIX):]
    if arch not in ARCHS:
        raise ValueError(f"config.init.model={model!r}: the tiny backbones are "
                         f"{', '.join(PREFIX + a for a in ARCHS)}")
    return arch


def tiny_hf_config(arch: str) -> dict:
    """The config.json of the tiny backbone (``aot`` compiles for it without making it)."""
    from bitembed_jax.testing.tiny_hf import hf_config

    return hf_config(arch).to_dict()


def _make_quietly(arch: str, folder: str):
    from transformers.utils import logging as hf_logging

    from bitembed_jax.testing.tiny_hf import make_tiny_hf

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # "Writing model shards" of a one-shard model, in the run's log
    try:
        with paths.atomic_dir(folder) as tmp:
            make_tiny_hf(arch, tmp, seed=0)
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def make_tiny_backbone(model: str, workdir: str, log=print) -> str:
    """The local folder standing for "tiny:ARCH": WORKDIR/tiny-ARCH, or this host's cache copy of it for a
    remote work dir, made once with seed 0 (so every host and every resumed run trains the same weights)."""
    arch = tiny_arch(model)
    where = paths.join(workdir, f"tiny-{arch}")
    per_host = paths.is_remote(where)
    folder = paths.cache_path(where, "models") if per_host else where
    error = None
    if per_host or jax.process_index() == 0:
        try:
            _make_once(model, arch, folder, log)
        except Exception as e:  # every process must hear of it, or the others wait at the barrier
            error = e
    # a failure on one process stops all of them with its error (not a watchdog timeout)
    agree(error, f"making the tiny backbone {folder}")
    return folder


def _make_once(model: str, arch: str, folder: str, log):
    if os.path.isdir(folder):
        log(f"config.init.model={model}: the tiny random {arch} backbone in {folder}")
        return
    _make_quietly(arch, folder)
    log(f"config.init.model={model}: made a tiny random {arch} backbone in {folder} (what `bitembed-jax "
        f"make-tiny` writes), converted to the student as config.init says; --init-from DIR trains your own")
