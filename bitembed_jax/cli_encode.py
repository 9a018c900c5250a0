"""``bitembed-jax encode``: one text per line of a file -> vectors, on one process or a pod's many.

Everything is checked before the model is loaded. With several processes each encodes its contiguous share of
the lines and writes a shard; process 0 then writes the manifest (``io.embeddings``) once every shard exists.
"""
import os

from bitembed_jax.choices import CALIBRATION_METHODS, DEFAULT_MAX_LENGTH, PRECISIONS
from bitembed_jax.cli_help import add_command


def read_texts(path: str, flag: str = "--input") -> list[str]:
    """One text per line of a UTF-8 file; a missing file, a folder, an empty file or an empty line is an error."""
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path} is a folder; give a text file with one text per line")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{flag} {path} not found")
    try:
        with open(path, encoding="utf-8") as f:
            texts = [line.rstrip("\n") for line in f]
    except UnicodeDecodeError as e:
        raise ValueError(f"{flag} {path}: not UTF-8 text ({e})") from None
    if not texts:
        raise ValueError(f"{flag} {path} has no lines to encode")
    empty = [i + 1 for i, t in enumerate(texts) if not t.strip()]
    if empty:
        raise ValueError(f"{flag} {path}: empty line(s) {empty[:10]}: one text per line expected")
    return texts


def encode_calibration(args, num_processes: int):
    """What encode codes with: "model" (the folder's), "none", "input" (fitted on the vectors being encoded) or
    the calibration saved in an earlier archive (e.g. the corpus's, for its queries)."""
    flags = (("--calibrate-on-input", args.calibrate_on_input), ("--no-calibration", args.no_calibration),
             ("--calibration-from", args.calibration_from))
    asked = [f for f, on in flags if on]
    if asked and args.precision == "fp32":
        raise ValueError(f"{asked[0]}: fp32 vectors are stored as they are; calibration is for int and binary codes")
    if args.calibration_method and not args.calibrate_on_input:
        raise ValueError("--calibration-method goes with --calibrate-on-input")
    if args.calibrate_on_input and num_processes > 1:  # each process sees its own shard only
        raise ValueError("--calibrate-on-input: every shard must be coded with one calibration; run `bitembed-jax "
                         "calibrate --model M --input FILE` first (or encode on one process)")
    if args.calibration_from:
        cal = _stored(args.calibration_from).calibration
        if cal is None:
            raise ValueError(f"--calibration-from {args.calibration_from}: the archive holds no calibration")
        return cal
    return "input" if args.calibrate_on_input else "none" if args.no_calibration else "model"


def _stored(path: str):
    """The archive of ``--calibration-from``; anything else is an error naming the flag and the file."""
    import zipfile

    from bitembed_jax.quant.storage import StoredEmbeddings

    if not os.path.isfile(path):
        raise FileNotFoundError(f"--calibration-from {path} not found" if not os.path.exists(path) else
                                f"--calibration-from {path} is a folder; give the .npz archive of an earlier encode")
    if not zipfile.is_zipfile(path):  # numpy would try it as a pickle, and say only that
        raise ValueError(f"--calibration-from {path}: not an .npz archive written by encode")
    return StoredEmbeddings.load(path)


def _vectors(args, enc, texts, calibration, show_progress: bool):
    """float32 vectors, or codes coded with ``calibration`` (fitted here on ``texts`` when "input")."""
    if calibration != "input":
        return enc.encode(texts, batch_size=args.batch_size, prompt=args.prompt, precision=args.precision,
                          dim=args.dim, show_progress=show_progress, calibration=calibration)
    from bitembed_jax.quant.calibration import Calibration

    floats = enc.encode(texts, batch_size=args.batch_size, prompt=args.prompt, show_progress=show_progress)
    cal = Calibration.fit(floats, args.calibration_method or "standardize",
                          source=f"{len(texts)} texts of {os.path.basename(args.input)}")
    return enc.store(floats, args.precision, args.dim, cal)


def vector_suffix(args) -> str:
    return ".npy" if args.precision == "fp32" and args.dim is None else ".npz"


def check_out(args, num_processes: int):
    """--out: FILE.npy (float32) or FILE.npz (codes, or --dim) from one process; NAME.json (a manifest of
    shards) from one or several. numpy would append its own suffix to other names."""
    from bitembed_jax.io.paths import check_apart

    given = getattr(args, "given", {}).get("model")
    check_apart("--out", args.out, [("--model", given or args.model, args.model), ("--input", args.input),
                                    ("--calibration-from", args.calibration_from)], "write the vectors elsewhere")
    suffix = vector_suffix(args)
    if num_processes > 1 and not args.out.endswith(".json"):
        raise ValueError(f"--out {args.out}: {num_processes} processes write one shard each and a manifest; "
                         "name the manifest *.json")
    if not args.out.endswith((suffix, ".json")):
        what = ("float32 vectors are an .npy array" if suffix == ".npy" else
                f"{args.precision} vectors{' cut to --dim' if args.dim else ''} are an .npz archive (codes, scale, "
                "precision, dim)")
        raise ValueError(f"--out {args.out}: {what}; name the file *{suffix} (or *.json for a manifest of shards)")
    folder = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--out: folder {folder} does not exist")
    if not args.overwrite and os.path.exists(args.out):
        raise FileExistsError(f"--out {args.out} exists; pass --overwrite to replace it")


def run_encode(args):
    import jax

    from bitembed_jax.encode import Encoder
    from bitembed_jax.io import embeddings
    from bitembed_jax.io.model_dir import read_config
    from bitembed_jax.parallel.distributed import agree

    for flag, value in (("--batch-size", args.batch_size), ("--max-length", args.max_length)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} {value}: must be at least 1")
    texts = read_texts(args.input)
    n, me = jax.process_count(), jax.process_index()
    check_out(args, n)
    cfg, _ = read_config(args.model)  # the config alone: --dim is checked before the weights are read
    if args.dim is not None and not 1 <= args.dim <= cfg.hidden_size:
        raise ValueError(f"--dim {args.dim}: must be in 1..{cfg.hidden_size} for {args.model}")
    calibration = encode_calibration(args, n)
    enc = Encoder.from_pretrained(args.model, max_length=args.max_length)
    first, end = embeddings.shard_rows(len(texts), n, me)
    vecs = _vectors(args, enc, texts[first:end], calibration, me == 0)
    if not args.out.endswith(".json"):
        embeddings.save_vectors(args.out, vecs)
        _report(args, vecs, args.out)
        return
    shard, error = embeddings.shard_name(args.out, me, n, vector_suffix(args)), None
    try:
        embeddings.save_vectors(shard, vecs)
    except Exception as e:  # noqa: BLE001 - re-raised by agree, on every process
        error = e
    agree(error, "writing the shards")  # process 0 writes the manifest once every shard is whole
    if me == 0:
        rows = [embeddings.shard_rows(len(texts), n, i) for i in range(n)]
        shards = [{"file": os.path.basename(embeddings.shard_name(args.out, i, n, vector_suffix(args))),
                   "rows": int(b - a)} for i, (a, b) in enumerate(rows)]
        embeddings.write_manifest(args.out, shards, args.precision, int(args.dim or cfg.hidden_size))
        print(f"wrote {len(texts)} {args.precision} vectors as {n} shard(s) listed in {args.out} "
              "(read with bitembed_jax.io.embeddings.load_embeddings)")


def _report(args, vecs, path: str):
    import numpy as np

    if isinstance(vecs, np.ndarray):
        print(f"wrote {vecs.shape} float32 vectors to {path}")
        return
    cal = vecs.calibration and f"; calibrated per dimension ({vecs.calibration.method}, {vecs.calibration.source})"
    print(f"wrote {len(vecs)} {args.precision} vectors ({vecs.nbytes_per_vector} bytes each: codes {vecs.codes.shape} "
          f"{vecs.codes.dtype} + scales{cal or ''}) to {path} (numpy .npz)")


def add_encode_parser(subparsers, add_pod_flags):
    e = add_command(subparsers, "encode",
                    summary="embed one text per line of a file into a .npy array (.npz for codes)",
                    description="Encodes every line of a UTF-8 text file with a model folder (or a training "
                                "workdir's model/): float32 vectors (.npy), or int8/int4/int2/binary codes and "
                                "Matryoshka cuts (.npz). With several processes each writes a shard and process 0 a "
                                "manifest (.json).",
                    example="bitembed-jax encode --model runs/quick --input texts.txt --out vectors.npy")
    e.add_argument("--model", required=True, help="a model folder or a training workdir")
    e.add_argument("--input", required=True, help="a UTF-8 text file, one text per line")
    e.add_argument("--out", required=True,
                   help="FILE.npy of float32 vectors; FILE.npz of codes + scales for int*/binary or --dim; "
                        "NAME.json: one shard per process and this manifest (required with several processes)")
    e.add_argument("--batch-size", type=int, default=32, help="texts per forward pass")
    e.add_argument("--max-length", type=int, default=None,
                   help=f"tokens per text (default: the model folder's, else {DEFAULT_MAX_LENGTH})")
    e.add_argument("--prompt", default=None, help="prefix for every text (e.g. a query instruction)")
    e.add_argument("--precision", default="fp32", choices=PRECISIONS, help="what each vector is stored as")
    e.add_argument("--dim", type=int, default=None, help="Matryoshka dimension")
    cal = e.add_mutually_exclusive_group()
    cal.add_argument("--calibrate-on-input", action="store_true",
                     help="int/binary: calibrate each dimension on these texts' vectors (e.g. the corpus being "
                          "indexed) instead of the model folder's statistics; saved in the .npz")
    cal.add_argument("--calibration-from", default=None, metavar="FILE.npz",
                     help="int/binary: code with the calibration saved in an earlier archive (e.g. the corpus's, "
                          "to encode its queries)")
    cal.add_argument("--no-calibration", action="store_true",
                     help="int/binary: plain per-vector codes, ignoring the model folder's statistics")
    e.add_argument("--calibration-method", default=None, choices=CALIBRATION_METHODS,
                   help="with --calibrate-on-input (default standardize; see `bitembed-jax calibrate -h`)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_pod_flags(e)
    e.set_defaults(func=run_encode)
    return e
