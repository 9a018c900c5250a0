"""Our model folder: ``bitembed_config.json`` + orbax ``params/`` + tokenizer files.

Written to a temporary sibling and renamed into place, so a folder is never
half-written; an existing non-empty folder is only replaced with ``overwrite``.
"""
import hashlib
import json
import os
import shutil
import tempfile

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from bitembed_jax.io import paths
from bitembed_jax.io.state_paths import flat_params
from bitembed_jax.models import ModelConfig, build_model

CONFIG_NAME = "bitembed_config.json"
PARAMS_DIR = "params"
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja",
)


def check_writable(out_dir: str, overwrite: bool):
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty; pass --overwrite to replace it")


def abstract_model(cfg: ModelConfig):
    return nnx.eval_shape(lambda: build_model(cfg))


def save_model_dir(out_dir: str, model, cfg: ModelConfig, *, tokenizer_dir=None, extra: dict | None = None,
                   overwrite: bool = False):
    if paths.is_remote(out_dir):  # e.g. WORKDIR/model of a pod run in a gs:// workdir
        if paths.exists(paths.join(out_dir, CONFIG_NAME)) and not overwrite:
            raise FileExistsError(f"{out_dir} holds a model; pass --overwrite to replace it")
        with tempfile.TemporaryDirectory() as tmp:
            local = _save_local(os.path.join(tmp, "model"), model, cfg, tokenizer_dir, extra, False)
            paths.copy_tree(local, out_dir, last=CONFIG_NAME)
        return out_dir
    return _save_local(out_dir, model, cfg, tokenizer_dir, extra, overwrite)


def _save_local(out_dir, model, cfg, tokenizer_dir, extra, overwrite):
    out_dir = os.path.abspath(out_dir)
    check_writable(out_dir, overwrite)
    with paths.atomic_dir(out_dir) as tmp:
        params = flat_params(nnx.state(model))
        ckpt = ocp.StandardCheckpointer(multiprocessing_options=_this_process_only())
        ckpt.save(os.path.join(tmp, PARAMS_DIR), {k: np.asarray(jax.device_get(v)) for k, v in params.items()})
        ckpt.wait_until_finished()
        with open(os.path.join(tmp, CONFIG_NAME), "w") as f:
            json.dump({"model": cfg.to_dict(), **(extra or {})}, f, indent=2, sort_keys=True)
        if tokenizer_dir:
            for name in TOKENIZER_FILES:
                src = os.path.join(tokenizer_dir, name)
                if os.path.exists(src):
                    shutil.copy2(src, os.path.join(tmp, name))
    return out_dir


def _this_process_only():
    """A model folder is written by one process (process 0 of a pod) from host arrays: orbax must not wait for
    the other processes at its barriers."""
    if jax.process_count() == 1:
        return ocp.options.MultiprocessingOptions()
    me = jax.process_index()
    return ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me},
                                              barrier_sync_key_prefix=f"model-dir-{me}")


def saved_steps(workdir: str) -> list[int]:
    """The finished checkpoints of a training work dir (orbax renames a step's folder to its number once whole)."""
    ckpts = paths.join(workdir, "checkpoints")
    return sorted(int(p.name) for p in epath.Path(ckpts).iterdir() if p.name.isdigit()) if paths.exists(ckpts) else []


def _unfinished_run(path: str) -> str | None:
    """Why ``path`` is a training workdir that has no model folder yet, or None if it is not one."""
    ckpts = paths.join(path, "checkpoints")
    run_config = paths.join(path, "config.json")
    if not paths.exists(ckpts):
        if not paths.exists(run_config):
            return None
        try:  # an HF folder has a config.json too; a run's holds the training config
            keys = set(json.loads(epath.Path(run_config).read_text()))
        except (OSError, ValueError):
            return None
        if not {"train", "init", "data"} <= keys:
            return None
    steps = saved_steps(path)
    done = f"its latest checkpoint is step {steps[-1]}" if steps else "it saved no checkpoint"
    return (f"{path} is a training workdir without a model folder ({path}/model): its run has not finished "
            f"({done}); rerun its train command to finish it, or pass a model folder")


def resolve_model_dir(path: str) -> str:
    """A model folder, or a training workdir standing for the model folder it produced (``model/``); a workdir
    whose run has not produced it yet is an error that says so."""
    inner = paths.join(path, "model")
    if not paths.exists(paths.join(path, CONFIG_NAME)):
        if paths.exists(paths.join(inner, CONFIG_NAME)):
            return inner
        unfinished = _unfinished_run(path)
        if unfinished:
            raise FileNotFoundError(unfinished)
    return path


def onnx_folder_message(path: str) -> str:
    """What to do with an ONNX export folder given where a bitembed-jax model folder is expected."""
    return (f"{path} is an ONNX export folder (for serving, not a bitembed-jax model folder): encode with "
            f"bitembed_jax.export.onnx_runtime.OnnxEncoder.from_pretrained(path) or FastEmbed "
            f"(bitembed_jax.export.fastembed_loader.fastembed_model(path)); train, eval, export and calibrate "
            f"take the model folder it was exported from")


def refuse_onnx_folder(path: str):
    """An ONNX export is refused where a model folder is read, before anything is loaded."""
    meta = paths.join(path, CONFIG_NAME)
    if paths.is_remote(path) or not os.path.isfile(meta):
        return
    try:
        with open(meta) as f:
            fmt = (json.load(f).get("export") or {}).get("format")
    except (OSError, ValueError, AttributeError):
        return
    if fmt == "onnx":
        raise ValueError(onnx_folder_message(path))


def read_config(model_dir: str) -> tuple[ModelConfig, dict]:
    path = os.path.join(model_dir, CONFIG_NAME)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: {model_dir} is not a bitembed-jax model folder "
                                f"(make one with `bitembed-jax convert` or `bitembed-jax export`)")
    with open(path) as f:
        meta = json.load(f)
    return ModelConfig.from_dict(meta["model"]), meta


def fingerprint(model_dir: str) -> str:
    """sha256 of a folder's file names and contents: what its model's outputs depend on, wherever it lies, so a
    cache of those outputs can tell a moved copy (the same) from a model retrained in place (another)."""
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"{model_dir}: not a folder")
    h = hashlib.sha256()
    for root, dirs, files in os.walk(model_dir):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            h.update(os.path.relpath(path, model_dir).encode() + b"\0")
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()
