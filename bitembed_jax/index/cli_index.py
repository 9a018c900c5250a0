"""``bitembed-jax index build|search|bench``: our vectors in usearch / faiss (and PostgreSQL + pgvector in the
bench), searched with optional int8 rescoring. Every input is checked before a model is loaded."""
import json
import os

from bitembed_jax.choices import INDEX_PRECISIONS as PRECISIONS
from bitembed_jax.cli_help import add_command
CALIBRATIONS = ("auto", "model", "corpus", "none")
BUILD_EXAMPLE = "bitembed-jax index build --model M --input corpus.txt --out idx --engine usearch --precision binary"
SEARCH_EXAMPLE = "bitembed-jax index search --index idx --query 'how do plants make food?' --k 10 --rescore 4"


def _read_corpus(path: str):
    """texts (list), float32 vectors (.npy, from ``encode``) or stored codes (.npz, from ``encode --precision``)."""
    import numpy as np

    from bitembed_jax.cli_encode import read_texts
    from bitembed_jax.quant.storage import StoredEmbeddings

    if path.endswith(".npy"):
        if not os.path.exists(path):
            raise FileNotFoundError(f"--input {path} not found")
        x = np.load(path, allow_pickle=False)
        if x.ndim != 2 or x.dtype != np.float32:
            raise ValueError(f"--input {path}: expected float32 (n, d) vectors, got {x.dtype} {x.shape}")
        return x
    if path.endswith(".npz"):
        if not os.path.exists(path):
            raise FileNotFoundError(f"--input {path} not found")
        return StoredEmbeddings.load(path)
    return read_texts(path)


def _model_record(model: str) -> tuple[dict, object]:
    """What the manifest records of the model, and the model folder's calibration (or None)."""
    from bitembed_jax.index.folder import model_fingerprint
    from bitembed_jax.io.model_dir import read_config
    from bitembed_jax.quant.calibration import model_calibration

    cfg, meta = read_config(model)
    record = {"path": os.path.abspath(model), "fingerprint": model_fingerprint(model), "dim": int(cfg.hidden_size)}
    return record, model_calibration(meta)


def _calibration(choice: str, precision: str, encoder_cal, floats, source: str):
    from bitembed_jax.index.coding import fit_calibration

    if precision == "fp32":
        if choice not in ("auto", "none"):
            raise ValueError(f"--calibration {choice}: fp32 vectors are stored as the model makes them")
        return None
    if choice == "none":
        if precision == "fp32-calibrated":
            raise ValueError("--precision fp32-calibrated needs a calibration (model or corpus)")
        return None
    if choice == "model" and encoder_cal is None:
        raise ValueError("--calibration model: the model folder has none (bitembed-jax calibrate adds one)")
    if choice in ("model", "auto") and encoder_cal is not None:
        return encoder_cal
    return fit_calibration(floats, source)


def _coded(args, corpus, model: dict, model_cal):
    """(Coding, what the engine stores, the int8 rescoring store or None) for texts, floats or stored codes."""
    import numpy as np

    from bitembed_jax.index.coding import Coding, engine_codes

    source = f"{len(corpus)} vectors of {os.path.basename(args.input)}"
    if isinstance(corpus, (np.ndarray, list)):
        if isinstance(corpus, list):
            from bitembed_jax.eval.local import embed_texts

            floats = embed_texts(_encoder(args.model, args), corpus, batch_size=args.batch_size)
        elif corpus.shape[1] != model["dim"]:
            raise ValueError(f"--input {args.input}: {corpus.shape[1]}-dim vectors, {args.model} makes {model['dim']}")
        else:
            floats = corpus
        cal = _calibration(args.calibration, args.precision, model_cal, floats, source)
        coding = Coding(args.precision, floats.shape[1], cal)
        vectors, rescore = coding.engine_vectors(floats), (coding.rescore_store(floats) if coding.rescorable else None)
    else:  # stored codes: in the engine as they are; rescoring only if they are the int8 codes themselves
        want = "fp32" if args.precision == "fp32-calibrated" else args.precision
        if corpus.precision != want or args.precision == "fp32-calibrated":
            raise ValueError(f"--input {args.input} holds {corpus.precision} codes; --precision {args.precision} "
                             f"needs {want if want != args.precision else 'float'} vectors or texts")
        if corpus.dim != model["dim"]:
            raise ValueError(f"--input {args.input}: {corpus.dim}-dim codes, {args.model} makes {model['dim']}")
        coding = Coding(args.precision, corpus.dim, corpus.calibration)
        vectors, rescore = engine_codes(corpus), (corpus if corpus.precision == "int8" else None)
    return coding, vectors, rescore


def run_build(args) -> None:
    from bitembed_jax.index.coding import check_precision, describe
    from bitembed_jax.index.engine import Hnsw
    from bitembed_jax.index.engines import engine_class
    from bitembed_jax.index.folder import VectorIndex
    from bitembed_jax.io.model_dir import check_writable

    check_precision(args.precision)
    if args.engine not in ("usearch", "faiss"):
        raise ValueError(f"--engine {args.engine}: index build writes usearch or faiss folders (pgvector runs in "
                         "index bench, in a server of its own)")
    engine_class(args.engine)  # installed?
    from bitembed_jax.io import paths

    paths.check_apart("--out", args.out, [("--model", args.model), ("--input", args.input)],
                      "write the index to another folder")
    check_writable(args.out, args.overwrite)
    corpus = _read_corpus(args.input)
    model, model_cal = _model_record(args.model)
    hnsw = Hnsw(m=args.m, ef_construction=args.ef_construction) if args.hnsw else None
    coding, vectors, rescore = _coded(args, corpus, model, model_cal)
    ix = VectorIndex.build(args.out, vectors, coding, args.engine, hnsw=hnsw, rescore_store=rescore, model=model,
                           threads=args.threads, overwrite=args.overwrite,
                           source=f"{len(corpus)} vectors of {os.path.basename(args.input)}")
    print(f"wrote a {args.engine} {'HNSW' if hnsw else 'flat'} index of {len(ix)} {args.precision} vectors to "
          f"{args.out} ({'with' if rescore is not None else 'without'} int8 codes for rescoring; calibration: "
          f"{describe(coding.calibration)})")


def _encoder(model: str, args):
    from bitembed_jax.encode import Encoder

    return Encoder.from_pretrained(model, max_length=getattr(args, "max_length", None))


def run_search(args) -> None:
    import numpy as np

    from bitembed_jax.cli_encode import read_texts
    from bitembed_jax.index.folder import VectorIndex, model_fingerprint

    if (args.query is None) == (args.queries is None):
        raise ValueError("give --query TEXT (repeatable) or --queries FILE (one text per line, or a .npy of vectors)")
    manifest = VectorIndex.read_manifest(args.index)
    model = args.model or manifest["model"].get("path")
    if not model or not os.path.isdir(model):
        raise FileNotFoundError(f"--index {args.index}: its model {model} is not here; pass --model")
    index = VectorIndex.open(args.index, precision=args.precision, model_fingerprint=model_fingerprint(model))
    if args.queries and args.queries.endswith(".npy"):
        if not os.path.exists(args.queries):
            raise FileNotFoundError(f"--queries {args.queries} not found")
        texts, floats = None, np.load(args.queries, allow_pickle=False)
        index.coding.check(floats, f"--queries {args.queries}")
    else:
        texts = args.query or read_texts(args.queries, "--queries")
        enc = _encoder(model, args)
        prompt = args.prompt if args.prompt is not None else enc.prompts.get("query", "")
        floats = enc.encode(texts, batch_size=args.batch_size, prompt=prompt)
    rows, scores = index.search(floats, k=args.k, rescore=args.rescore, threads=args.threads)
    for i in range(len(rows)):
        hits = [{"row": int(r), "score": round(float(s), 6)} for r, s in zip(rows[i], scores[i]) if r >= 0]
        print(json.dumps({"query": texts[i] if texts else i, "hits": hits}))


def run_bench(args) -> None:
    from bitembed_jax.index.bench import run_bench_cli
    from bitembed_jax.io import paths

    inputs = [(flag, getattr(args, name)) for flag, name in
              (("--model", "model"), ("--retrieval", "retrieval"), ("--stats-from", "stats_from"),
               ("--corpus-vectors", "corpus_vectors"), ("--query-vectors", "query_vectors"))]
    paths.check_apart("--output", args.output, inputs, "write the bench to another folder")
    run_bench_cli(args)


def _add_bench(sub):
    b = add_command(sub, "bench", summary="recall, nDCG@10, memory and speed of every precision x engine x flat/HNSW",
                    description="Every precision x engine x flat/HNSW x rescore on a BEIR folder (or N vectors "
                                "drawn to match the model's statistics): bytes, measured memory, build time, "
                                "recall@10 against exact raw and calibrated fp32, nDCG@10, queries/s, latency.",
                    example="bitembed-jax index bench --model M --retrieval BEIR_DIR --engines usearch,faiss,"
                            "pgvector --precision all --rescore 1,4 --output OUT")
    b.add_argument("--model", required=True)
    src = b.add_mutually_exclusive_group(required=True)
    src.add_argument("--retrieval", help="a BEIR folder (corpus.jsonl, queries.jsonl, qrels/test.tsv)")
    src.add_argument("--synthetic", type=int, metavar="N",
                     help="N vectors drawn per dimension from the mean/std of the model's vectors of --stats-from")
    b.add_argument("--stats-from", default=None, help="with --synthetic: FILE.npy of the model's vectors (encode), "
                                                      "or a BEIR folder whose passages are encoded here")
    b.add_argument("--synthetic-queries", type=int, default=200)
    b.add_argument("--corpus-vectors", default=None, metavar="FILE.npy",
                   help="with --retrieval: the model's vectors of corpus.jsonl, in its order (skips encoding)")
    b.add_argument("--query-vectors", default=None, metavar="FILE.npy", help="likewise for the judged queries")
    b.add_argument("--max-length", type=int, default=None, help="tokens per text when encoding here")
    b.add_argument("--engines", default="usearch,faiss", help="comma-separated: usearch, faiss, pgvector")
    b.add_argument("--precision", default="all", help="comma-separated, or all: " + ", ".join(PRECISIONS))
    b.add_argument("--variants", default="flat,hnsw", help="flat, hnsw or both")
    b.add_argument("--rescore", default="1,4", help="comma-separated multipliers (1: no rescoring)")
    b.add_argument("--threads", default="1,2", help="thread counts for queries/s")
    b.add_argument("--calibration", default="auto", choices=("auto", "model", "corpus"),
                   help="auto: the model folder's statistics, else fitted on the corpus being indexed")
    b.add_argument("--k", type=int, default=10)
    b.add_argument("--bootstrap", type=int, default=1000, help="resamples of the queries for recall intervals")
    b.add_argument("--batch-size", type=int, default=32)
    b.add_argument("--output", required=True, help="a folder: index_bench.json, index_bench.md, index_bench.png")
    b.add_argument("--overwrite", action="store_true")
    b.set_defaults(func=run_bench)


def _add_build(sub):
    b = add_command(sub, "build", summary="encode a corpus (or take encoded vectors/codes) into a usearch or faiss "
                                          "index",
                    description="Encode a corpus (or take the .npy vectors / .npz codes of encode) and store its "
                                "codes in the engine's own type, with the int8 codes kept for rescoring and a "
                                "manifest of the model, precision and calibration.",
                    example=BUILD_EXAMPLE)
    b.add_argument("--model", required=True, help="the model folder that encodes the corpus and, later, the queries")
    b.add_argument("--input", required=True,
                   help="texts (one per line), FILE.npy float32 vectors or FILE.npz codes from bitembed-jax encode")
    b.add_argument("--out", required=True, help="the index folder to write")
    b.add_argument("--engine", default="usearch", choices=("usearch", "faiss"))
    b.add_argument("--precision", default="binary", choices=PRECISIONS,
                   help="what the engine stores (int4/int2 go in as signed bytes: no engine stores them packed)")
    b.add_argument("--hnsw", action="store_true", help="an HNSW graph (else flat, exact search)")
    b.add_argument("--m", type=int, default=16, help="HNSW links per node")
    b.add_argument("--ef-construction", type=int, default=128)
    b.add_argument("--calibration", default="auto", choices=CALIBRATIONS,
                   help="auto: the model folder's per-dimension statistics, else fitted on this corpus")
    b.add_argument("--threads", type=int, default=1, help="build threads (1: a repeatable HNSW graph)")
    b.add_argument("--batch-size", type=int, default=32)
    b.add_argument("--max-length", type=int, default=None)
    b.add_argument("--overwrite", action="store_true")
    b.set_defaults(func=run_build)


def _add_search(sub):
    s = add_command(sub, "search", summary="top-k rows of an index for queries (JSON lines), with optional rescoring",
                    description="Code the queries as the index's manifest says and print the top-k rows per "
                                "query as JSON lines; --rescore M re-ranks k x M candidates with the int8 codes.",
                    example=SEARCH_EXAMPLE)
    s.add_argument("--index", required=True)
    s.add_argument("--query", action="append", default=None, help="a query text (repeatable)")
    s.add_argument("--queries", default=None, help="one query per line, or FILE.npy of the model's float vectors")
    s.add_argument("--k", type=int, default=10)
    s.add_argument("--rescore", type=int, default=1, metavar="M",
                   help="fetch k x M by the codes and re-rank them with the stored int8 codes (1: off)")
    s.add_argument("--model", default=None, help="default: the model the index was built with (checked)")
    s.add_argument("--precision", default=None, choices=PRECISIONS, help="fail unless the index holds this")
    s.add_argument("--prompt", default=None, help="query prefix (default: the model folder's query prompt)")
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--max-length", type=int, default=None)
    s.set_defaults(func=run_search)


def add_index_parser(subparsers):
    p = add_command(subparsers, "index", summary="put vectors in usearch / faiss / pgvector indexes; search, "
                                                 "rescore, bench",
                    description="Low-bit vectors in real vector engines: build an index, search it (with "
                                "rescoring), bench every precision x engine.",
                    example=BUILD_EXAMPLE)
    sub = p.add_subparsers(dest="index_command", required=True)
    _add_build(sub)
    _add_search(sub)
    _add_bench(sub)
    return p
