"""The ``calibrate`` subcommand: per-dimension statistics of a model's vectors on sample texts (e.g. training
passages), saved in the model folder's bitembed_config.json so that ``encode``, ``similarity``, ``eval`` and
exports code int/binary vectors with them (see ``quant.calibration``)."""
import json
import os

import numpy as np

from bitembed_jax.choices import DEFAULT_MAX_LENGTH
from bitembed_jax.cli_encode import read_texts
from bitembed_jax.cli_help import add_command
from bitembed_jax.io import paths
from bitembed_jax.quant.calibration import META_KEY, METHODS

DEFAULT_LIMIT = 1000


def sample(texts: list[str], limit: int, seed: int) -> list[str]:
    """At most ``limit`` texts, a fixed-seed random subset kept in file order."""
    if len(texts) <= limit:
        return texts
    keep = np.sort(np.random.default_rng(seed).choice(len(texts), limit, replace=False))
    return [texts[i] for i in keep]


def _config_path(model: str, overwrite: bool) -> tuple[str, dict]:
    """The folder's bitembed_config.json and its contents, checked before any model is loaded."""
    from bitembed_jax.io.model_dir import CONFIG_NAME, resolve_model_dir

    if paths.is_remote(model):
        raise ValueError(f"--model {model}: calibrate writes into the model folder; copy it to a local disk first")
    path = os.path.join(resolve_model_dir(model), CONFIG_NAME)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: {model} is not a bitembed-jax model folder")
    with open(path, encoding="utf-8") as f:
        meta = json.load(f)
    if meta.get("embedding_scales"):
        raise ValueError(f"{path}: has embedding_scales (global scales of the raw vectors); remove them to calibrate "
                         "per dimension")
    if META_KEY in meta and not overwrite:
        raise FileExistsError(f"{path}: already calibrated ({meta[META_KEY].get('method')}, "
                              f"{meta[META_KEY].get('source')}); pass --overwrite to replace it")
    return path, meta


def run_calibrate(args) -> str:
    from bitembed_jax.encode import Encoder

    if args.limit < 2:
        raise ValueError(f"--limit {args.limit}: calibration needs at least 2 texts")
    path, meta = _config_path(args.model_dir, args.overwrite)
    paths.check_apart("--model (written in place)", os.path.dirname(path), [("--input", args.input)],
                      "keep the sample texts outside the model folder")
    texts = read_texts(args.input)
    if len(texts) < 2:
        raise ValueError(f"--input {args.input}: calibration needs at least 2 texts, got 1")
    texts = sample(texts, args.limit, args.seed)
    enc = Encoder.from_pretrained(os.path.dirname(path), max_length=args.max_length)
    source = f"{len(texts)} texts of {os.path.basename(args.input)}"
    cal = enc.calibrate(texts, method=args.method, batch_size=args.batch_size, prompt=args.prompt, source=source,
                        show_progress=True)
    meta[META_KEY] = cal.to_meta()
    paths.write_text_atomic(path, json.dumps(meta, indent=2, sort_keys=True))
    print(f"wrote a {args.method} calibration of {source} into {path}: int and binary codes of this model "
          f"(encode, similarity, eval, export) are now calibrated per dimension")
    return path


def add_calibrate_parser(subparsers):
    c = add_command(
        subparsers, "calibrate",
        summary="per-dimension statistics for int/binary output codes, saved in the model folder",
        example="bitembed-jax calibrate --model runs/quick/model --input passages.txt",
        description="Encodes sample texts (e.g. training passages, or the corpus you will index) and saves each "
                    "output dimension's statistics in MODEL/bitembed_config.json: int and binary codes then map "
                    "every dimension to a common range first, so a few massive dimensions no longer take the "
                    "whole grid. fp32 vectors are unchanged.")
    # dest model_dir: the cli copies a remote --model to a local cache, and this command writes into the folder
    c.add_argument("--model", dest="model_dir", required=True, help="a bitembed-jax model folder (written in place)")
    c.add_argument("--input", required=True, help="a text file, one text per line")
    c.add_argument("--method", default=METHODS[0], choices=METHODS,
                   help="standardize: (x - mean) / std, per-vector scales; range: sentence-transformers' "
                        "per-dimension (min, max) filling the grid, no per-vector scale")
    c.add_argument("--limit", type=int, default=DEFAULT_LIMIT,
                   help="use at most N texts (a fixed-seed random subset of the file)")
    c.add_argument("--seed", type=int, default=0, help="seed of that subset")
    c.add_argument("--prompt", default=None, help="prefix of every text (default: none, as for passages)")
    c.add_argument("--batch-size", type=int, default=32, help="texts per forward pass")
    c.add_argument("--max-length", type=int, default=None,
                   help=f"tokens per text (default: the model folder's, else {DEFAULT_MAX_LENGTH})")
    c.add_argument("--overwrite", action="store_true", help="replace the folder's calibration")
    c.set_defaults(func=run_calibrate)
    return c
