"""The ``bitembed-jax`` command line."""
import argparse
import json
import os
import sys

from bitembed_jax import choices
from bitembed_jax.calibrate import add_calibrate_parser
from bitembed_jax.cli_encode import add_encode_parser
from bitembed_jax.eval.cli_eval import add_eval_parser
from bitembed_jax.export.cli_export import add_export_parser
from bitembed_jax.parallel.local_pod import add_local_pod_parser

EXIT_ERROR = 2  # bad input, a refused config, a diverged run: fix something first
EXIT_RESUMABLE = 75  # stopped before the end (SIGTERM, Ctrl-C, a lost host) after a checkpoint: rerun to resume
EXIT_ABORTED = 130  # a second Ctrl-C: stopped at once, nothing saved since the last checkpoint


def add_pod_flags(parser):
    """How one process of a multi-process job (a pod, a GPU cluster) joins it; TPU VMs need none of these."""
    g = parser.add_argument_group("several processes (one per host); each flag else its environment variable")
    g.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="process 0's address, the same on every process (env JAX_COORDINATOR_ADDRESS)")
    g.add_argument("--num-processes", type=int, default=None, help="how many processes (env JAX_NUM_PROCESSES)")
    g.add_argument("--process-id", type=int, default=None, help="this one, 0..N-1 (env JAX_PROCESS_ID)")
    g.add_argument("--heartbeat-timeout", type=int, default=None, metavar="S",
                   help="stop when another process is silent this long (env BITEMBED_HEARTBEAT_TIMEOUT; 60)")
    return parser


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
    out = train(cfg, args.workdir, resume_from=args.resume_from,
                allow_change=[k.strip() for k in (args.allow_change or "").split(",") if k.strip()])
    if out is None:  # a signal stopped it after a checkpoint: not finished, and schedulers must see that
        return EXIT_RESUMABLE
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
    r = report(compiled, args.topology, len(devices), args.step_time, model_flops_per_step(mcfg, cfg),
               code_matmul=mcfg.code_matmul)
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


def _add_convert_parser(sub):
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


def _add_train_parser(sub):
    t = sub.add_parser("train", help="contrastive training (extra --config.KEY=VALUE args override the config)")
    t.add_argument("--config", required=True, help="a configs/*.py file")
    t.add_argument("--workdir", required=True, help="checkpoints, metrics and the final model go here")
    t.add_argument("--init-from", default=None,
                   help="shorthand for --config.init.model (an HF folder, a model folder or a training workdir)")
    t.add_argument("--teacher", default=None, help="shorthand for --config.teacher.model (fine-tuning)")
    t.add_argument("--resume-from", type=int, default=None, metavar="STEP",
                   help="continue from this saved step (e.g. before a divergence); later checkpoints are moved to "
                        "WORKDIR/abandoned/ and the choice is recorded in WORKDIR/history.jsonl")
    t.add_argument("--allow-change", default=None, metavar="KEY[,KEY]",
                   help="config keys (or prefixes ending in '.') allowed to differ from the work dir's record, "
                        "e.g. train.learning_rate; each change is recorded in WORKDIR/history.jsonl")
    add_pod_flags(t)
    t.set_defaults(func=_train, takes_overrides=True)


def _add_aot_and_average_parsers(sub):
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


def _add_make_tiny_parser(sub):
    m = sub.add_parser("make-tiny", help="write a tiny random HF checkpoint + tokenizer (quickstart, tests)")
    m.add_argument("--arch", default="qwen3", choices=choices.ARCHS)
    m.add_argument("--out", required=True)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--overwrite", action="store_true")
    m.set_defaults(func=_make_tiny)


def build_parser():
    p = argparse.ArgumentParser(prog="bitembed-jax", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    _add_convert_parser(sub)
    add_encode_parser(sub, add_pod_flags)
    _add_train_parser(sub)
    _add_aot_and_average_parsers(sub)
    add_calibrate_parser(sub)
    add_export_parser(sub)
    add_pod_flags(add_eval_parser(sub))
    add_local_pod_parser(sub)
    _add_make_tiny_parser(sub)
    from bitembed_jax.index.cli_index import add_index_parser  # argparse only: the engines load when a command runs

    add_index_parser(sub)
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
        if hasattr(args, "coordinator"):
            from bitembed_jax.parallel.distributed import join

            join(args.coordinator, args.num_processes, args.process_id, heartbeat_s=args.heartbeat_timeout)
        if getattr(args, "takes_overrides", False):
            rc = args.func(args, extra)
        else:
            _localize_model_args(args)
            rc = args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as e:
        print(f"error: {e.args[0] if isinstance(e, KeyError) and e.args else e}", file=sys.stderr)  # no repr quotes
        return _leave(EXIT_ERROR)
    except KeyboardInterrupt:
        print("aborted (second Ctrl-C): nothing saved since the last checkpoint", file=sys.stderr)
        return _leave(EXIT_ABORTED)
    return rc if isinstance(rc, int) else 0


def _leave(rc: int) -> int:
    """In a multi-process job a process that stops on an error leaves at once: JAX's exit would wait (minutes) at
    a shutdown barrier for processes that may be waiting for it; they see it gone and stop (Watchdog)."""
    jax = sys.modules.get("jax")
    if jax is not None and jax.distributed.is_initialized() and jax.process_count() > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    return rc


if __name__ == "__main__":
    sys.exit(main())
