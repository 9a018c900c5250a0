"""The ``bitembed-jax`` command line."""
import argparse
import json
import os
import sys

from bitembed_jax import choices


def _convert(args):
    opts = dict(mode="bitnet" if args.bitnet else "fp", norm=args.norm, act_bits=args.act_bits,
                attention=args.attention, pooling=args.pooling)
    if args.gguf:
        from bitembed_jax.convert.gguf_import import convert_gguf

        out = convert_gguf(args.gguf, args.out, overwrite=args.overwrite, **opts)
    else:
        from bitembed_jax.convert.hf_import import convert

        out = convert(args.hf, args.out, overwrite=args.overwrite, **opts)
    print(f"wrote {opts['mode']} encoder to {out}")


def _encode(args):
    import numpy as np

    from bitembed_jax.encode import Encoder
    from bitembed_jax.io.model_dir import read_config

    for flag, value in (("--batch-size", args.batch_size), ("--max-length", args.max_length)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} {value}: must be at least 1")
    if os.path.isdir(args.input):
        raise ValueError(f"--input {args.input} is a folder; give a text file with one text per line")
    if not os.path.exists(args.input):
        raise FileNotFoundError(f"--input {args.input} not found")
    try:
        with open(args.input, encoding="utf-8") as f:
            texts = [line.rstrip("\n") for line in f]
    except UnicodeDecodeError as e:
        raise ValueError(f"--input {args.input}: not UTF-8 text ({e})") from None
    if not texts:
        raise ValueError(f"--input {args.input} has no lines to encode")
    empty = [i + 1 for i, t in enumerate(texts) if not t.strip()]
    if empty:
        raise ValueError(f"--input {args.input}: empty line(s) {empty[:10]}: one text per line expected")
    # numpy would append its own suffix to any other name, and the file would not be where we say it is
    suffix = ".npy" if args.precision == "fp32" and args.dim is None else ".npz"
    if not args.out.endswith(suffix):
        what = ("float32 vectors are an .npy array" if suffix == ".npy" else
                f"{args.precision} vectors{' cut to --dim' if args.dim else ''} are an .npz archive (codes, scale, "
                "precision, dim)")
        raise ValueError(f"--out {args.out}: {what}; name the file *{suffix}")
    folder = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--out: folder {folder} does not exist")
    if not args.overwrite and os.path.exists(args.out):
        raise FileExistsError(f"--out {args.out} exists; pass --overwrite to replace it")
    cfg, _ = read_config(args.model)  # the config alone: --dim is checked before the weights are read
    if args.dim is not None and not 1 <= args.dim <= cfg.hidden_size:
        raise ValueError(f"--dim {args.dim}: must be in 1..{cfg.hidden_size} for {args.model}")
    enc = Encoder.from_pretrained(args.model, max_length=args.max_length)
    vecs = enc.encode(texts, batch_size=args.batch_size, prompt=args.prompt, precision=args.precision,
                      dim=args.dim, show_progress=True)
    if isinstance(vecs, np.ndarray):
        np.save(args.out, vecs)
        print(f"wrote {vecs.shape} float32 vectors to {args.out}")
        return
    vecs.save(args.out)  # codes with their scales: everything needed to score them (StoredEmbeddings.load)
    print(f"wrote {len(vecs)} {args.precision} vectors ({vecs.nbytes_per_vector} bytes each: codes {vecs.codes.shape} "
          f"{vecs.codes.dtype} + scales) to {args.out} (numpy .npz)")


def _average(args):
    from bitembed_jax.convert.average import average_models

    weights = None
    if args.weights:
        try:
            weights = [float(w) for w in args.weights.split(",")]
        except ValueError:
            raise ValueError(f"--weights {args.weights!r}: expected comma-separated numbers") from None
    out = average_models(args.model, args.out, weights=weights, overwrite=args.overwrite)
    print(f"wrote the average of {len(args.model)} models to {out}")


def _train(args, overrides):
    from bitembed_jax.config_loader import apply_overrides, load_config_file
    from bitembed_jax.train.loop import train

    cfg = apply_overrides(load_config_file(args.config), overrides)
    if args.init_from:
        cfg.init.model = args.init_from
    if args.teacher:
        cfg.teacher.model = args.teacher
    out = train(cfg, args.workdir)
    if out:
        print(f"trained model folder: {out}")


def _aot(args, overrides):
    from bitembed_jax.config_loader import apply_overrides, load_config_file
    from bitembed_jax.train.aot import (LibtpuMissing, compile_step, format_report, model_flops_per_step, report,
                                        topology_devices)

    cfg = apply_overrides(load_config_file(args.config), overrides)
    try:
        devices = topology_devices(args.topology)
    except LibtpuMissing as e:  # a CPU install: one line on what to install, as for any other usage error
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        compiled, mcfg = compile_step(cfg, devices)
    except Exception as e:  # the TPU compiler itself refuses programs that exceed HBM
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        print(f"topology {args.topology}: DOES NOT FIT\n  {str(e).splitlines()[0]}")
        raise SystemExit(f"the step does not fit in the HBM of {args.topology}: raise config.loss.num_chunks, "
                         f"turn on config.train.remat, use more fsdp, or a smaller batch") from None
    r = report(compiled, args.topology, len(devices), args.step_time, model_flops_per_step(mcfg, cfg))
    print(format_report(r))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
    if not r["fits"]:
        raise SystemExit(f"the step needs {r['total_gib']:.2f} GiB per chip, more than the {r['hbm_gib']:.0f} GiB "
                         f"of {args.topology}: raise config.loss.num_chunks, turn on config.train.remat, "
                         f"use more fsdp, or a smaller batch")


def _make_tiny(args):
    from bitembed_jax.io.model_dir import check_writable
    from bitembed_jax.testing.tiny_hf import make_tiny_hf

    check_writable(args.out, args.overwrite)
    make_tiny_hf(args.arch, args.out, seed=args.seed)
    print(f"wrote a tiny random {args.arch} Hugging Face checkpoint + tokenizer to {args.out}")


def build_parser():
    p = argparse.ArgumentParser(prog="bitembed-jax", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("convert",
                       help="import a local Hugging Face checkpoint folder or GGUF file into a bitembed-jax model")
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("--hf", help="local HF folder (config.json + safetensors or pytorch_model.bin)")
    src.add_argument("--gguf", help="a GGUF file (read and dequantized by transformers; needs the gguf package)")
    c.add_argument("--out", required=True)
    c.add_argument("--bitnet", action="store_true", help="ternary weights + low-bit activations (else fp)")
    c.add_argument("--norm", default="per_linear", choices=choices.NORMS)
    c.add_argument("--act-bits", type=int, default=8, choices=choices.ACT_BITS)
    c.add_argument("--attention", default="causal", choices=choices.ATTENTION)
    c.add_argument("--pooling", default="last", choices=choices.POOLING)
    c.add_argument("--overwrite", action="store_true")
    c.set_defaults(func=_convert)

    e = sub.add_parser("encode", help="embed one text per line of a file into a .npy array (.npz for codes)")
    e.add_argument("--model", required=True)
    e.add_argument("--input", required=True)
    e.add_argument("--out", required=True,
                   help="FILE.npy of float32 vectors; FILE.npz of codes + scales for int*/binary or --dim")
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--max-length", type=int, default=None,
                   help=f"tokens per text (default: the model folder's, else {choices.DEFAULT_MAX_LENGTH})")
    e.add_argument("--prompt", default=None, help="prefix for every text (e.g. a query instruction)")
    e.add_argument("--precision", default="fp32", choices=choices.PRECISIONS)
    e.add_argument("--dim", type=int, default=None, help="Matryoshka dimension")
    e.add_argument("--overwrite", action="store_true")
    e.set_defaults(func=_encode)

    t = sub.add_parser("train", help="contrastive training (extra --config.KEY=VALUE args override the config)")
    t.add_argument("--config", required=True, help="a configs/*.py file")
    t.add_argument("--workdir", required=True, help="checkpoints, metrics and the final model go here")
    t.add_argument("--init-from", default=None,
                   help="shorthand for --config.init.model (an HF folder, a model folder or a training workdir)")
    t.add_argument("--teacher", default=None, help="shorthand for --config.teacher.model (fine-tuning)")
    t.set_defaults(func=_train, takes_overrides=True)

    a = sub.add_parser("aot", help="compile the real train step for a TPU topology and report per-chip memory")
    a.add_argument("--config", required=True)
    a.add_argument("--topology", required=True, help="e.g. v5e:16x16, v4:4x4x4, v5p:8x8x8")
    a.add_argument("--step-time", type=float, default=None, help="seconds per step, for the MFU estimate")
    a.add_argument("--json", default=None, help="also write the report as JSON here")
    a.set_defaults(func=_aot, takes_overrides=True)

    v = sub.add_parser("average", help="average the weights of models fine-tuned from one start (a model soup)")
    v.add_argument("--model", action="append", required=True, help="a model folder or training workdir (repeat)")
    v.add_argument("--weights", default=None, help="comma-separated, one per --model (default: equal)")
    v.add_argument("--out", required=True)
    v.add_argument("--overwrite", action="store_true")
    v.set_defaults(func=_average)

    from bitembed_jax.export.cli_export import add_export_parser

    add_export_parser(sub)

    from bitembed_jax.eval.cli_eval import add_eval_parser

    add_eval_parser(sub)

    m = sub.add_parser("make-tiny", help="write a tiny random HF checkpoint + tokenizer (quickstart, tests)")
    m.add_argument("--arch", default="qwen3", choices=choices.ARCHS)
    m.add_argument("--out", required=True)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--overwrite", action="store_true")
    m.set_defaults(func=_make_tiny)
    return p


def _localize_model_args(args):
    """encode / eval / export read model folders as local files: a training workdir stands for its model/
    (an unfinished one is an error that says so), and a gs:// one is copied once to this host's cache
    (``paths.local_copy``). ``train`` does the same for its config."""
    from bitembed_jax.io import paths
    from bitembed_jax.io.model_dir import resolve_model_dir

    for name in ("model", "checkpoint", "teacher"):
        value = getattr(args, name, None)
        if isinstance(value, str):
            value = resolve_model_dir(value)
            setattr(args, name, paths.local_copy(value, "models") if paths.is_remote(value) else value)


def main(argv=None):
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "takes_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if getattr(args, "takes_overrides", False):
            args.func(args, extra)
        else:
            _localize_model_args(args)
            args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as e:
        print(f"error: {e.args[0] if isinstance(e, KeyError) and e.args else e}", file=sys.stderr)  # no repr quotes
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
