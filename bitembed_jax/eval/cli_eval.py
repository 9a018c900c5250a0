"""The ``eval`` subcommand: mteb tasks (datasets from the Hub) and/or local files, at several output
precisions and Matryoshka dims, with an optional fp32 teacher as the reference."""
import json
import os

from bitembed_jax.choices import CALIBRATION_SOURCES, DEFAULT_MAX_LENGTH, PRECISIONS
from bitembed_jax.cli_help import add_command


def parse_precisions(text: str) -> list[str]:
    if text == "all":
        return list(PRECISIONS)
    out = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in out if p not in PRECISIONS]
    if bad or not out:
        raise ValueError(f"--precision takes 'all' or a comma list of {', '.join(PRECISIONS)}; got {text!r}")
    return out


def parse_dims(text: str | None) -> list[int | None]:
    if text is None:
        return [None]  # the model's full size
    try:
        return [int(d) for d in text.split(",") if d.strip()]
    except ValueError:
        raise ValueError(f"--dims takes a comma list of integers, got {text!r}") from None


def parse_calibration(text: str) -> list[str]:
    out = [c.strip() for c in text.split(",") if c.strip()]
    bad = [c for c in out if c not in CALIBRATION_SOURCES]
    if bad or not out:
        raise ValueError(f"--calibration takes a comma list of {', '.join(CALIBRATION_SOURCES)}; got {text!r}")
    return out


def model_name(path: str) -> str:
    """A model's name in the rows: its folder's, or the training run's for the model/ folder a run wrote."""
    path = os.path.normpath(os.path.abspath(path))
    name = os.path.basename(path)
    return os.path.basename(os.path.dirname(path)) if name == "model" else name


def _load_prompts(path: str | None) -> dict | None:
    if path is None:
        return None
    with open(path, encoding="utf-8") as f:
        prompts = json.load(f)
    if not isinstance(prompts, dict) or not all(isinstance(v, str) for v in prompts.values()):
        raise ValueError(f"{path}: expected a JSON object of instruction strings")
    return prompts


def _models(args):
    """(name, role, folder, precisions, dims): the model at every setting asked, the teacher at fp32."""
    from bitembed_jax.io.model_dir import read_config

    dims = parse_dims(args.dims)
    full = read_config(args.model)[0].hidden_size
    bad = [d for d in dims if d is not None and not 1 <= d <= full]
    if bad:
        raise ValueError(f"--dims: dim must be in 1..{full} for {args.model}, got {bad}")
    out = [(model_name(args.model), "model", args.model, parse_precisions(args.precision), dims)]
    if args.teacher:
        read_config(args.teacher)  # a wrong folder fails now, not after the model's run
        out.append(("teacher", "teacher", args.teacher, ["fp32"], [None]))
    return out


def _score_model(args, path, precisions, dims, data) -> list[dict]:
    """Rows of one model folder on mteb tasks and local files (the model is loaded once)."""
    from bitembed_jax.encode import Encoder
    from bitembed_jax.eval import local

    rows = []
    if data["tasks"]:
        from bitembed_jax.eval import mteb_wrapper
        wrapped = mteb_wrapper.MTEBEncoder.from_pretrained(path, max_length=args.max_length,
                                                           batch_size=args.batch_size, prompts=data["prompts"])
        settings = [(p, d) for d in dims for p in precisions]
        rows += mteb_wrapper.evaluate_mteb(wrapped, data["tasks"], settings, os.path.join(args.output, "mteb"))
        enc = wrapped.encoder
    else:
        enc = Encoder.from_pretrained(path, max_length=args.max_length)
    if data["retrieval"]:
        query_prompt = args.query_prompt if args.query_prompt is not None else enc.prompts.get("query", "")
        rows += local.evaluate_retrieval(enc, data["retrieval"], precisions, dims, batch_size=args.batch_size,
                                         query_prompt=query_prompt, calibration=data["calibration"])
    if data["sts"]:
        rows += local.evaluate_sts(enc, data["sts"], precisions, dims, batch_size=args.batch_size,
                                   prompt=args.sts_prompt, calibration=data["calibration"])
    return rows


def _check_output_apart(args):
    from bitembed_jax.io.paths import check_apart

    given = getattr(args, "given", {})
    check_apart("--output", args.output,
                [("--model", given.get("model", args.model), args.model),
                 ("--teacher", given.get("teacher", args.teacher), args.teacher), ("--retrieval", args.retrieval),
                 ("--sts", args.sts), ("--prompts", args.prompts)], "write the results elsewhere")


def run_eval(args) -> dict:
    import jax

    from bitembed_jax.eval import local, report

    if jax.process_index() != 0:  # scores are small; one process computes and writes them
        print(f"process {jax.process_index()}: eval runs on process 0 of {jax.process_count()}")
        return {}

    if not (args.benchmark or args.tasks or args.retrieval or args.sts):
        raise ValueError("nothing to evaluate: give --benchmark/--tasks (mteb) and/or --retrieval/--sts (local files)")
    report.check_output(args.output, args.overwrite)
    models = _models(args)  # options and folders are checked before any slow step
    _check_output_apart(args)
    calibration = parse_calibration(args.calibration)
    if (args.benchmark or args.tasks) and calibration != ["model"]:
        raise ValueError("--calibration: mteb tasks are scored with the model folder's own calibration only; "
                         "compare calibrations on --retrieval / --sts files")
    # local files are read first, so a malformed line fails before a model is loaded
    data = {"retrieval": local.read_beir(args.retrieval, args.split) if args.retrieval else None,
            "sts": local.read_sts(args.sts, args.sts_limit) if args.sts else None,
            "prompts": _load_prompts(args.prompts), "tasks": None, "calibration": calibration}
    plotted = [d.name for d in (data["retrieval"], data["sts"]) if d]
    if args.benchmark or args.tasks:
        from bitembed_jax.eval import mteb_wrapper  # imports mteb: only when asked for
        data["tasks"] = mteb_wrapper.resolve_tasks(args.benchmark, args.tasks)
        plotted.append(mteb_wrapper.MEAN)

    info = {"model": os.path.abspath(args.model), "teacher": args.teacher and os.path.abspath(args.teacher),
            "precisions": models[0][3], "dims": models[0][4], "calibration": ",".join(calibration)}
    if data["retrieval"]:
        info["qrels skipped"] = ", ".join(f"{k}={v}" for k, v in data["retrieval"].skipped.items())
        if any(data["retrieval"].skipped.values()):
            print(f"warning: {args.retrieval}: qrels lines skipped: {info['qrels skipped']}")
    rows = []
    for name, role, path, precisions, dims in models:
        try:
            rows += [{"model": name, "role": role, **r} for r in _score_model(args, path, precisions, dims, data)]
        except ConnectionError as e:  # mteb data unreachable: said plainly, as the cli says its other errors
            raise SystemExit(f"error: {e}") from None

    paths = report.write_outputs(args.output, rows, info, plotted)
    print(report.summary_markdown(rows))
    print(f"wrote {', '.join(paths.values())}" + (f"; mteb results under {args.output}/mteb" if data["tasks"] else ""))
    return paths


def add_eval_parser(subparsers):
    e = add_command(
        subparsers, "eval", summary="score a model on mteb tasks or local retrieval/STS files, at several precisions",
        description="mteb tasks download their datasets from the Hugging Face Hub (network needed); "
                    "--retrieval/--sts read local files. Writes results.json, summary.md and plot.png to --output "
                    "(and mteb's results folder to OUTPUT/mteb).",
        example="bitembed-jax eval --model runs/quick --sts stsb/test.tsv --precision all --output results/quick")
    e.add_argument("--model", required=True, help="a bitembed-jax model folder")
    e.add_argument("--teacher", default=None, help="another model folder, scored at fp32 as the reference line")
    mt = e.add_mutually_exclusive_group()
    mt.add_argument("--benchmark", default=None, help='an mteb benchmark, e.g. "MTEB(eng, v2)"')
    mt.add_argument("--tasks", nargs="+", default=None, help="mteb task names")
    e.add_argument("--retrieval", default=None, help="a BEIR folder: corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv")
    e.add_argument("--split", default="test", help="qrels split of --retrieval")
    e.add_argument("--sts", default=None, help="a TSV with header score<TAB>s1<TAB>s2")
    e.add_argument("--sts-limit", type=int, default=None, help="use the first N pairs of --sts")
    e.add_argument("--precision", default="fp32", help="'all' or a comma list of fp32,int8,int4,int2,binary")
    e.add_argument("--dims", default=None, help="comma list of Matryoshka dims (default: the full size)")
    e.add_argument("--calibration", default="model",
                   help="int/binary codes: comma list of model (the folder's per-dimension statistics, if any), "
                        "none (without), corpus (fitted on the --retrieval corpus / the --sts sentences, as a user "
                        "calibrates on their own corpus at indexing time); fp32 is never calibrated")
    e.add_argument("--batch-size", type=int, default=32, help="texts per forward pass")
    e.add_argument("--max-length", type=int, default=None,
                   help=f"tokens per text (default: the model folder's, else {DEFAULT_MAX_LENGTH})")
    e.add_argument("--query-prompt", default=None,
                   help="prefix of --retrieval queries (default: the query prompt saved with each model)")
    e.add_argument("--sts-prompt", default="", help="prefix of both --sts sentences (default: none)")
    e.add_argument("--prompts", default=None,
                   help="mteb: JSON object of instructions keyed by task name, task type or prompt type "
                        "(e.g. {\"SciFact\": \"...\", \"STS\": \"...\"}); default: the task's own prompt, else mteb's "
                        "default for its type, else its description")
    e.add_argument("--output", required=True, help="results folder")
    e.add_argument("--overwrite", action="store_true", help="replace results already in --output")
    e.set_defaults(func=run_eval)
    return e
