"""Weight averaging ("model soup") of model folders fine-tuned from one start.

Fine-tunes of the same checkpoint on different data orders or seeds usually sit in one basin, so the mean
of their latent weights is a model of its own that is often better than each (Wortsman et al., 2022). For a
BitNet model the latent fp weights are averaged and the ternary weights follow from them at the forward, as
during training; an export folder holds only packed ternary weights, which do not average, and is refused.
"""
import os
import sys

import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from bitembed_jax.io import paths
from bitembed_jax.io.model_dir import (PARAMS_DIR, abstract_model, check_writable, read_config, resolve_model_dir,
                                       save_model_dir)
from bitembed_jax.io.state_paths import fill_state, flat_params
from bitembed_jax.models.config import RUNTIME_FIELDS

# metadata that must agree, since it changes what the model's vectors mean
_SAME_META = ("prompts", "precisions", "matryoshka_dims")


def start_of(meta: dict) -> str | None:
    """What a model folder was made from: the model its training run started from (``started_from``), else the
    checkpoint it was converted from; None when the folder does not say (written before either was recorded)."""
    source = meta.get("source") or {}
    return meta.get("started_from") or source.get("hf_path") or source.get("gguf_file")


def check_same_start(model_dirs: list[str], metas: list[dict], force: bool, warn=None) -> str | None:
    """A soup needs models fine-tuned from one start (a model with the start itself is fine too: WiSE-FT).
    Different starts are refused unless ``force``, then warned about; folders that do not say are not judged.
    Returns the common start (None if unknown or several)."""
    starts = {os.path.abspath(d): start_of(m) for d, m in zip(model_dirs, metas)}
    # a model that is itself another input's start stands for that start
    roots = {d: (starts.get(s) or s) if s in starts else s for d, s in starts.items()}
    named = {d: s for d, s in roots.items() if s}
    if len(set(named.values())) <= 1:
        return next(iter(named.values()), None)
    listing = "; ".join(f"{d} from {s}" for d, s in named.items())
    if not force:
        raise ValueError(f"the models were trained from different starts ({listing}): their weights need not "
                         f"lie in one basin, so their average can be a poor model; pass --force to average anyway")
    (warn or (lambda m: print(m, file=sys.stderr)))(f"warning: averaging models trained from different starts "
                                                     f"({listing})")
    return None


def check_compatible(model_dirs: list[str], *, force: bool = False):
    """(config, metadata) of the first folder, after every folder is checked against it; fails naming the key."""
    if len(model_dirs) < 2:
        raise ValueError(f"averaging needs at least two model folders, got {len(model_dirs)}")
    configs = [read_config(d) for d in model_dirs]
    start = check_same_start(model_dirs, [meta for _, meta in configs], force)
    first_cfg, first_meta = configs[0]
    for d, (cfg, meta) in zip(model_dirs, configs):
        if meta.get("export"):
            raise ValueError(f"{d} is an export folder (packed ternary weights): average the training model "
                             "folders instead")
        ours, theirs = first_cfg.to_dict(), cfg.to_dict()
        diff = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k) and k not in RUNTIME_FIELDS)
        if diff:
            raise ValueError(f"{d}: model config differs from {model_dirs[0]} in {diff} "
                             f"({[(ours.get(k), theirs.get(k)) for k in diff]})")
        for key in _SAME_META:
            if meta.get(key) != first_meta.get(key):
                raise ValueError(f"{d}: bitembed_config.json key {key!r} is {meta.get(key)!r}, "
                                 f"{model_dirs[0]} has {first_meta.get(key)!r}")
    return first_cfg, {**first_meta, "started_from": start}


def average_params(model_dirs: list[str], target: dict, weights: list[float]) -> dict:
    """{path: weighted mean} over the folders' params, accumulated in float64 and cast back to each leaf's dtype."""
    ckpt = ocp.StandardCheckpointer()
    total = {}
    for d, w in zip(model_dirs, weights):
        values = ckpt.restore(os.path.join(d, PARAMS_DIR), target)
        for k, v in values.items():
            total[k] = total.get(k, 0.0) + w * np.asarray(v, np.float64)
    return {k: total[k].astype(target[k].dtype) for k in target}


def average_models(model_dirs: list[str], out_dir: str, *, weights: list[float] | None = None,
                   overwrite: bool = False, force: bool = False) -> str:
    """Write the (weighted) mean of ``model_dirs`` to ``out_dir`` with the first folder's tokenizer."""
    import jax

    resolved = [os.path.abspath(resolve_model_dir(d)) for d in model_dirs]
    # before anything is read: --overwrite would replace an input
    paths.check_apart("--out", out_dir, [("--model", g, d) for g, d in zip(model_dirs, resolved)],
                      "average into another folder")
    model_dirs = resolved
    weights = [1.0] * len(model_dirs) if weights is None else [float(w) for w in weights]
    if len(weights) != len(model_dirs) or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(f"--weights: need {len(model_dirs)} non-negative numbers with a positive sum, got {weights}")
    weights = [w / sum(weights) for w in weights]
    cfg, meta = check_compatible(model_dirs, force=force)
    check_writable(out_dir, overwrite)  # before reading gigabytes of weights
    abstract = abstract_model(cfg)
    graphdef, abs_state = nnx.split(abstract)
    target = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in flat_params(abs_state).items()}
    model = nnx.merge(graphdef, fill_state(abs_state, average_params(model_dirs, target, weights)))
    # calibrated output scales belong to one model's vectors; the average needs its own
    extra = {k: v for k, v in meta.items() if k not in ("model", "embedding_scales", "train", "source")
             and v is not None}
    extra["averaged_from"] = [{"model": d, "weight": w} for d, w in zip(model_dirs, weights)]
    return save_model_dir(out_dir, model, cfg, tokenizer_dir=model_dirs[0], extra=extra, overwrite=overwrite)
