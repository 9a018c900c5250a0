"""``bitembed-jax data build``: prepare a pairs dataset once, as an Apache Beam pipeline (imports on use)."""

EXAMPLE_COMMAND = "bitembed-jax data build 'corpus/*.jsonl' extra.parquet --out /data/pairs --workers 2"


def _beam_options(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--beam-option {pair!r}: expected KEY=VALUE (e.g. project=my-project)")
        out[key.lstrip("-")] = value
    return out


def _build(args):
    import importlib.util
    import sys

    from bitembed_jax.data.build import build
    from bitembed_jax.data.runners import BeamRunner

    if importlib.util.find_spec("apache_beam") is None:
        print("error: data build needs Apache Beam: pip install -r requirements.txt (or -e '.[beam]')",
              file=sys.stderr)
        raise SystemExit(2)

    runner = BeamRunner(args.runner, args.workers, _beam_options(args.beam_option))
    summary = build(args.files, args.out, runner, skip_bad=args.skip_bad, max_negatives=args.max_negatives,
                    validation_fraction=args.validation_fraction, seed=args.seed, overwrite=args.overwrite,
                    overwrite_flag="--overwrite", say=print)
    held = summary.splits.get("validation", 0)
    print(f"built dataset {summary.path}: {summary.count} pairs" + (f" ({held} held out for validation)" if held else "")
          + (f", skipped {summary.skipped} bad records, e.g. {summary.skip_reasons[0]}" if summary.skipped else "")
          + f"; data_digest {summary.data_digest}")


def add_data_parser(sub):
    from bitembed_jax.cli_help import add_command

    d = add_command(sub, "data", summary="prepare training data once: validate pair files and write an ArrayRecord "
                                         "dataset (Apache Beam: local processes, Dataflow, Flink, Spark)",
                    description="Prepare a pair corpus once, on an Apache Beam runner, into a dataset folder that "
                                "every host of a pod reads in place (config.data.dataset_dir).",
                    example=EXAMPLE_COMMAND)
    dsub = d.add_subparsers(dest="data_command", required=True)
    b = add_command(dsub, "build", summary="validate JSONL/Parquet pair files and write them as a dataset folder",
                    description="Validate every record (nothing is written if one is bad, unless --skip-bad), then "
                                "write the pairs in input order as ArrayRecord shards with metadata.json (counts, "
                                "sources, data_digest). The result does not depend on the runner or the number of "
                                "workers. Dataflow: see docs/tpu.md, 'Prepare 10^8 pairs on Dataflow'.",
                    example=EXAMPLE_COMMAND)
    b.add_argument("files", nargs="+", metavar="FILES",
                   help="JSONL or Parquet files, globs (quoted) or folders; local or gs://")
    b.add_argument("--out", required=True, help="the dataset folder (local, a mount, or gs://)")
    b.add_argument("--workers", type=int, default=1, help="DirectRunner processes on this machine")
    b.add_argument("--runner", default="DirectRunner",
                   choices=("DirectRunner", "DataflowRunner", "FlinkRunner", "SparkRunner"),
                   help="the Beam runner (Dataflow, Flink and Spark take their settings from --beam-option)")
    b.add_argument("--beam-option", action="append", metavar="KEY=VALUE",
                   help="a Beam pipeline option, repeatable (project=..., region=..., temp_location=gs://..., "
                        "num_workers=..., setup_file=...)")
    b.add_argument("--skip-bad", action="store_true", help="skip bad records (counted and reported) instead of "
                                                           "stopping at the first one")
    b.add_argument("--max-negatives", type=int, default=None, metavar="K", help="keep at most K negatives a pair")
    b.add_argument("--validation-fraction", type=float, default=0.0, metavar="F",
                   help="hold out this fraction of the pairs as a 'validation' split (seeded)")
    b.add_argument("--seed", type=int, default=0, help="seed of the validation choice")
    b.add_argument("--overwrite", action="store_true", help="replace a dataset already built at --out")
    b.set_defaults(func=_build)
    return d
