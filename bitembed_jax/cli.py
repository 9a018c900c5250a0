"""The ``bitembed-jax`` command line."""
import argparse
import json
import os
import sys

from bitembed_jax import __version__, choices
from bitembed_jax.calibrate import add_calibrate_parser
from bitembed_jax.cli_help import HelpFormatter, add_command
from bitembed_jax.cli_encode import add_encode_parser
from bitembed_jax.data.cli_data import add_data_parser
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
    g.add_argument("--join-timeout", type=int, default=None, metavar="S",
                   help="stop with one line when the job has not formed after this long (env "
                        "BITEMBED_JOIN_TIMEOUT; 120)")
    g.add_argument("--verbose", action="store_true",
                   help="also show the runtime's own output (gloo's connection lines, log lines, fatal-error "
                        "stacks), which otherwise goes to a log file only (env BITEMBED_VERBOSE=1)")
    return parser


def _convert(args):
    for flag, value in (("--norm", args.norm), ("--act-bits", args.act_bits)):
        if value is not None and not args.bitnet:  # an fp model has neither: it would record a setting it lacks
            raise ValueError(f"{flag} {value}: applies to bitnet models only; add --bitnet, or drop {flag}")
    opts = dict(mode="bitnet" if args.bitnet else "fp", norm=args.norm or choices.NORMS[0],
                act_bits=args.act_bits or choices.ACT_BITS[0], attention=args.attention, pooling=args.pooling)
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
    out = average_models(args.model, args.out, weights=weights, overwrite=args.overwrite, force=args.force)
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

    if args.json:
        from bitembed_jax.io.paths import check_apart

        check_apart("--json", args.json, [("--config", args.config)], "write the report elsewhere")
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
    c = add_command(sub, "convert",
                    summary="import a local Hugging Face checkpoint folder or GGUF file into a bitembed-jax model",
                    description="Reads a Qwen3 or Gemma3 (text) checkpoint, checks every tensor name and shape "
                                "before reading a weight, and writes a bitembed-jax model folder (orbax params, "
                                "bitembed_config.json, the tokenizer): full precision, or with --bitnet ternary "
                                "weights and low-bit activations (the student to train).",
                    example="bitembed-jax convert --hf ./Qwen3-0.6B --out models/qwen3-bitnet --bitnet")
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("--hf", help="local HF folder (config.json + safetensors or pytorch_model.bin)")
    src.add_argument("--gguf", help="a GGUF file (read and dequantized by transformers; needs the gguf package)")
    c.add_argument("--out", required=True, help="the model folder to write")
    c.add_argument("--bitnet", action="store_true", help="ternary weights + low-bit activations (else fp)")
    c.add_argument("--norm", default=None, choices=choices.NORMS,
                   help=f"with --bitnet: where the extra RMSNorms go (default {choices.NORMS[0]})")
    c.add_argument("--act-bits", type=int, default=None, choices=choices.ACT_BITS,
                   help=f"with --bitnet: activation bits (default {choices.ACT_BITS[0]})")
    c.add_argument("--attention", default="causal", choices=choices.ATTENTION, help="attention mask")
    c.add_argument("--pooling", default="last", choices=choices.POOLING, help="how token states become a vector")
    c.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    c.set_defaults(func=_convert)


def _add_train_parser(sub):
    t = add_command(sub, "train", summary="contrastive training (extra --config.KEY=VALUE args override the config)",
                    description="Trains (or resumes) a run in --workdir from a configs/*.py file; any "
                                "--config.KEY=VALUE argument overrides that key (e.g. --config.train.num_steps=2000). "
                                "Checkpoints are atomic and the last step is always saved: the same command resumes "
                                "a stopped run, and on a finished run says so and does nothing (exit 0) unless "
                                "num_steps grew. Exit codes: 2 bad input, 75 stopped early after a checkpoint "
                                "(rerun to resume), 130 aborted.",
                    example="bitembed-jax train --config configs/quickstart.py --workdir runs/quick "
                            "--config.train.num_steps=100")
    t.add_argument("--config", required=True, help="a configs/*.py file (keys overridable with --config.KEY=VALUE)")
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
    a = add_command(sub, "aot", summary="compile the real train step for a TPU topology and report per-chip memory",
                    description="Compiles the train step of a config (with any --config.KEY=VALUE overrides) for a "
                                "TPU topology on this machine (needs libtpu, no TPU) and reports its memory per chip "
                                "against the chip's HBM; exits 1 when it does not fit.",
                    example="bitembed-jax aot --config configs/gemma3_270m_pretrain.py --topology v5e:16x16 "
                            "--config.train.batch_size=4096")
    a.add_argument("--config", required=True, help="a configs/*.py file (keys overridable with --config.KEY=VALUE)")
    a.add_argument("--topology", required=True, help="e.g. v5e:16x16, v4:4x4x4, v5p:8x8x8")
    a.add_argument("--step-time", type=float, default=None, help="seconds per step, for the MFU estimate")
    a.add_argument("--json", default=None, help="also write the report as JSON here")
    a.set_defaults(func=_aot, takes_overrides=True)

    v = add_command(sub, "average", summary="average the weights of models fine-tuned from one start (a model soup)",
                    description="Writes the (weighted) mean of the latent weights of model folders fine-tuned from "
                                "one start, with the first folder's tokenizer. Folders with different configs, "
                                "prompts or precisions are refused; models trained from different starts too, "
                                "unless --force.",
                    example="bitembed-jax average --model runs/seed0 --model runs/seed1 --out models/soup")
    v.add_argument("--model", action="append", required=True, help="a model folder or training workdir (repeat)")
    v.add_argument("--weights", default=None, help="comma-separated, one per --model (default: equal)")
    v.add_argument("--out", required=True, help="the model folder to write")
    v.add_argument("--force", action="store_true",
                   help="average models trained from different starts (a warning instead of a refusal)")
    v.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    v.set_defaults(func=_average)


def _add_make_tiny_parser(sub):
    m = add_command(sub, "make-tiny", summary="write a tiny random HF checkpoint + tokenizer (quickstart, tests)",
                    description="Writes a randomly initialised, tiny Hugging Face checkpoint of the architecture "
                                "with a small tokenizer: something to convert, train and export in seconds.",
                    example="bitembed-jax make-tiny --arch qwen3 --out /tmp/tiny-qwen3")
    m.add_argument("--arch", default="qwen3", choices=choices.ARCHS, help="architecture")
    m.add_argument("--out", required=True, help="the HF folder to write")
    m.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    m.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    m.set_defaults(func=_make_tiny)


def build_parser():
    p = argparse.ArgumentParser(prog="bitembed-jax", formatter_class=HelpFormatter,
                                description="BitNet-style text embedders in JAX: convert a checkpoint, train, "
                                            "encode, evaluate and export. `bitembed-jax COMMAND --help` shows a "
                                            "command's options, their defaults and an example.")
    p.add_argument("--version", action="version", version=f"bitembed-jax {__version__}")
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
    add_data_parser(sub)
    from bitembed_jax.index.cli_index import add_index_parser  # argparse only: the engines load when a command runs

    add_index_parser(sub)
    return p


def _localize_model_args(args):
    """encode / eval / export read model folders as local files: a training workdir stands for its model/
    (an unfinished one is an error that says so), and a gs:// one is copied once to this host's cache
    (``paths.local_copy``). ``train`` does the same for its config."""
    from bitembed_jax.io import paths
    from bitembed_jax.io.model_dir import refuse_onnx_folder, resolve_model_dir

    if getattr(args, "model_dir", None):  # calibrate's --model
        refuse_onnx_folder(resolve_model_dir(args.model_dir))
    args.given = {}  # the folders as the user named them, for the overlap checks (paths.check_apart)
    for name in ("model", "checkpoint", "teacher"):
        value = getattr(args, name, None)
        if isinstance(value, str):
            args.given[name] = value
            value = resolve_model_dir(value)
            refuse_onnx_folder(value)
            setattr(args, name, paths.local_copy(value, "models") if paths.is_remote(value) else value)


def main(argv=None):
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "takes_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if hasattr(args, "coordinator"):
            _join(args)
        if getattr(args, "takes_overrides", False):
            rc = args.func(args, extra)
        else:
            _localize_model_args(args)
            rc = args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, KeyError) as e:
        print(f"error: {e.args[0] if isinstance(e, KeyError) and e.args else e}", file=sys.stderr)  # no repr quotes
        return _leave(EXIT_ERROR)
    except KeyboardInterrupt:
        print("aborted (second Ctrl-C): nothing saved since the last checkpoint", file=sys.stderr)
        return _leave(EXIT_ABORTED)
    return rc if isinstance(rc, int) else 0


def _join(args):
    """Join the job when this is one of several processes; the runtime's own output then goes to a log file
    (``runtime_output``) unless --verbose."""
    from bitembed_jax.parallel import runtime_output
    from bitembed_jax.parallel.distributed import join

    if args.verbose:
        os.environ[runtime_output.ENV_VERBOSE] = "1"
    if join(args.coordinator, args.num_processes, args.process_id, heartbeat_s=args.heartbeat_timeout,
            timeout_s=args.join_timeout):
        import jax

        log = runtime_output.quiet(f"{args.command}-process{jax.process_index()}")
        if log:
            print(f"process {jax.process_index()} of {jax.process_count()}: the runtime's own output goes to {log} "
                  f"(--verbose shows it here)", file=sys.stderr, flush=True)


def _leave(rc: int) -> int:
    """In a multi-process job a process that stops on an error leaves at once: JAX's exit would wait (minutes) at
    a shutdown barrier for processes that may be waiting for it; they see it gone and stop (Watchdog)."""
    jax = sys.modules.get("jax")
    if jax is not None and jax.distributed.is_initialized() and jax.process_count() > 1:
        from bitembed_jax.parallel import runtime_output

        sys.stdout.flush()
        sys.stderr.flush()
        runtime_output.flush()
        os._exit(rc)
    return rc


if __name__ == "__main__":
    sys.exit(main())
