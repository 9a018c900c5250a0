"""The ``export`` subcommand: ``add_export_parser(subparsers)`` registers it (kept jax-free until run)."""
from bitembed_jax.choices import DEFAULT_MAX_LENGTH, DTYPES, EXPORT_FORMATS, LINEAR_CLASSES
from bitembed_jax.cli_help import add_command


def check_flags(args):
    """Flags of one format (or of --push-to-hub) given with another are refused, not silently ignored."""
    if args.linear_class is not None and args.format != "bitnet-2bit":
        raise ValueError(f"--linear-class {args.linear_class}: applies to --format bitnet-2bit only (not "
                         f"{args.format}); drop it")
    if args.embedding_block is not None and not (args.int8_embeddings or args.int4_embeddings):
        raise ValueError(f"--embedding-block {args.embedding_block}: applies with --int8-embeddings or "
                         "--int4-embeddings (--format onnx) only")
    if args.private and not args.push_to_hub:
        raise ValueError("--private: applies with --push-to-hub ORG/NAME only (it makes the uploaded repo private)")


def run_export(args) -> None:
    from bitembed_jax.export.hf_export import export

    check_flags(args)
    out = export(args.checkpoint, args.out, fmt=args.format, overwrite=args.overwrite,
                 int8_embeddings=args.int8_embeddings, int4_embeddings=args.int4_embeddings,
                 embedding_block=args.embedding_block, dtype=args.dtype,
                 linear_class=args.linear_class or LINEAR_CLASSES[0],
                 max_length=args.max_length, push_to_hub=args.push_to_hub, private=args.private)
    print(f"wrote {args.format} export to {out}")


def add_export_parser(subparsers):
    x = add_command(
        subparsers, "export",
        summary="packed ternary weights: bitnet-2bit (transformers / sentence-transformers), base3 (bitembed-jax) "
                "or onnx (ONNX Runtime)",
        example="bitembed-jax export --checkpoint runs/quick --format onnx --out exports/quick-onnx",
        description="Pack a bitnet model folder's ternary weights. bitnet-2bit loads with transformers' AutoModel "
                    "and SentenceTransformer (no remote code; needs the norm=per_linear or none layout); base3 "
                    "(1.6 bits per weight, any layout) is read back exactly by bitembed-jax; onnx (fp or bitnet "
                    "models, any layout) is the encoder as an ONNX graph for ONNX Runtime and FastEmbed, ternary "
                    "linears as integer matmuls.")
    x.add_argument("--checkpoint", required=True, help="a model folder, or a training workdir (its model/)")
    x.add_argument("--out", required=True, help="the export folder to write")
    x.add_argument("--format", default="bitnet-2bit", choices=EXPORT_FORMATS,
                   help="onnx: ONNX Runtime / FastEmbed (fp or bitnet models; "
                        "ternary linears as integer matmuls)")
    x.add_argument("--dtype", default="float32", choices=DTYPES,
                   help="token embeddings and norms (float32: exact; bfloat16: half the size)")
    x.add_argument("--int8-embeddings", action="store_true",
                   help="base3 and onnx: int8 token embeddings (base3: a float32 scale per row; onnx: a float16 "
                        "scale per --embedding-block values; ~4x smaller)")
    x.add_argument("--int4-embeddings", action="store_true",
                   help="onnx: int4 token embeddings with a float16 scale per block (~7x smaller; measure the "
                        "vectors)")
    x.add_argument("--embedding-block", type=int, default=None, metavar="N",
                   help="onnx: values per scale of --int8/--int4-embeddings (default 32, GGUF's Q8_0 block; the "
                        "hidden size for one scale per row)")
    x.add_argument("--linear-class", default=None, choices=LINEAR_CLASSES,
                   help=f"bitnet-2bit only: transformers' layer class (default {LINEAR_CLASSES[0]}: keeps weights "
                        f"packed in memory)")
    x.add_argument("--max-length", type=int, default=None,
                   help=f"sentence-transformers max_seq_length (default: the folder's, else {DEFAULT_MAX_LENGTH})")
    x.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    x.add_argument("--push-to-hub", default=None, metavar="ORG/NAME",
                   help="upload the folder afterwards (token from HF_TOKEN or `hf auth login`)")
    x.add_argument("--private", action="store_true", help="with --push-to-hub: create a private repo")
    x.set_defaults(func=run_export)
    return x
