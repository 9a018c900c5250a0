"""``bitembed-jax encode``: one text per line of a file -> vectors, on one process or a pod's many.

Everything is checked before the model is loaded. With several processes each encodes its contiguous share of
the lines and writes a shard; process 0 then writes the manifest (``io.embeddings``) once every shard exists.
"""
import os


def read_texts(path: str) -> list[str]:
    if os.path.isdir(path):
        raise ValueError(f"--input {path} is a folder; give a text file with one text per line")
    if not os.path.exists(path):
        raise FileNotFoundError(f"--input {path} not found")
    try:
        with open(path, encoding="utf-8") as f:
            texts = [line.rstrip("\n") for line in f]
    except UnicodeDecodeError as e:
        raise ValueError(f"--input {path}: not UTF-8 text ({e})") from None
    if not texts:
        raise ValueError(f"--input {path} has no lines to encode")
    empty = [i + 1 for i, t in enumerate(texts) if not t.strip()]
    if empty:
        raise ValueError(f"--input {path}: empty line(s) {empty[:10]}: one text per line expected")
    return texts


def vector_suffix(args) -> str:
    return ".npy" if args.precision == "fp32" and args.dim is None else ".npz"


def check_out(args, num_processes: int):
    """--out: FILE.npy (float32) or FILE.npz (codes, or --dim) from one process; NAME.json (a manifest of
    shards) from one or several. numpy would append its own suffix to other names."""
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
    enc = Encoder.from_pretrained(args.model, max_length=args.max_length)
    first, end = embeddings.shard_rows(len(texts), n, me)
    vecs = enc.encode(texts[first:end], batch_size=args.batch_size, prompt=args.prompt, precision=args.precision,
                      dim=args.dim, show_progress=me == 0)
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
    print(f"wrote {len(vecs)} {args.precision} vectors ({vecs.nbytes_per_vector} bytes each: codes {vecs.codes.shape} "
          f"{vecs.codes.dtype} + scales) to {path} (numpy .npz)")
