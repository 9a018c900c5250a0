"""``bitembed-jax index bench``: every precision x engine x (flat, HNSW) x rescore multiplier on one corpus, with
recall@k against exact raw fp32 and exact calibrated fp32 search (bootstrap 95% interval over queries), nDCG@10
(BEIR folders), bytes per vector and index bytes on disk and in memory (measured), build seconds, queries/s at
each thread count and one-query latency. Builds use one thread (a repeatable HNSW graph)."""
import dataclasses
import gc
import json
import os
import shutil
import time

import numpy as np

from bitembed_jax.index import bench_metrics as bm
from bitembed_jax.index.coding import PRECISIONS, Coding, describe, fit_calibration
from bitembed_jax.index.engine import ENGINES, Hnsw
from bitembed_jax.index.synthetic import chunked
from bitembed_jax.quant.storage import StoredEmbeddings


@dataclasses.dataclass
class Corpus:
    name: str
    docs: np.ndarray  # float32 (n, d): the model's vectors
    queries: np.ndarray
    query_ids: list | None = None  # with qrels: nDCG
    corpus_ids: list | None = None
    qrels: dict | None = None


def _list(value: str, allowed, flag: str) -> list:
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise ValueError(f"{flag} {value!r}: each must be one of {', '.join(allowed)}")
    return items


def _ints(value: str, flag: str) -> list[int]:
    try:
        out = [int(v) for v in value.split(",")]
    except ValueError:
        raise ValueError(f"{flag} {value!r}: comma-separated integers expected") from None
    if not out or min(out) < 1:
        raise ValueError(f"{flag} {value!r}: each must be at least 1")
    return out


def store_chunked(coding: Coding, floats: np.ndarray, int8: bool) -> StoredEmbeddings:
    parts = [(coding.rescore_store if int8 else coding.stored)(floats[s:s + 100_000])
             for s in range(0, len(floats), 100_000)]
    scale = None if parts[0].scale is None else np.concatenate([p.scale for p in parts])
    return dataclasses.replace(parts[0], codes=np.concatenate([p.codes for p in parts]), scale=scale)


def _served_rss(folder: str) -> int:
    """Resident memory of the index opened in a fresh process (``rss_probe``)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "bitembed_jax.index.rss_probe", folder], capture_output=True,
                         text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def _dir_bytes(folder: str, names) -> int:
    return sum(os.path.getsize(os.path.join(folder, n)) for n in names)


def _quality(found, refs, corpus: Corpus, k: int, resamples: int, fp32_ndcg: float | None) -> dict:
    row = {}
    for label, ref in refs.items():
        r = bm.recall_per_query(found[:, :k], ref)
        lo, hi = bm.bootstrap_interval(r, resamples)
        row.update({f"recall_{label}": float(r.mean()), f"recall_{label}_ci": [lo, hi]})
    if corpus.qrels is not None:
        nd = bm.ndcg_at_k(found, corpus.query_ids, corpus.corpus_ids, corpus.qrels, k)
        row.update({"ndcg_at_10": nd, "ndcg_ratio": nd / fp32_ndcg if fp32_ndcg else None})
    return row


def _speed(search, queries, threads: list[int]) -> dict:
    row = {f"qps_{t}t": bm.queries_per_second(search, queries, t) for t in threads}
    row["p50_ms"], row["p99_ms"] = bm.latencies_ms(search, queries)
    return row


def _engine_setting(engine, coding, corpus, hnsw, work, pg):
    """Build one index; (searcher, measured size fields, build seconds, closer)."""
    from bitembed_jax.index.folder import RESCORE_CODES, RESCORE_SCALE, VectorIndex

    n = len(corpus.docs)
    if engine == "pgvector":
        from bitembed_jax.index.pgvector_engine import PgvectorIndex

        t = time.perf_counter()
        ix = PgvectorIndex.build(pg.dsn, f"t_{coding.precision.replace('-', '_')}_{'hnsw' if hnsw else 'flat'}",
                                 corpus.docs, coding, hnsw)
        sec = time.perf_counter() - t
        disk = ix.disk_bytes()
        return ix, {"index_disk_bytes": disk, "bytes_per_vector": disk / n, "engine_memory_bytes": None,
                    "rss_delta_bytes": None, "rescore_disk_bytes": None}, sec, ix.close
    folder = os.path.join(work, f"{engine}-{coding.precision}-{'hnsw' if hnsw else 'flat'}")
    vectors = corpus.docs if coding.precision == "fp32" else chunked(coding.engine_vectors, corpus.docs)
    rescore = store_chunked(coding, corpus.docs, True) if coding.rescorable else None
    built = VectorIndex.build(folder, vectors, coding, engine, hnsw=hnsw, rescore_store=rescore, overwrite=True)
    sec = built.manifest["build"]["seconds"]
    files = built.manifest["engine_files"]
    del built, vectors, rescore
    gc.collect()
    rss = _served_rss(folder)
    ix = VectorIndex.open(folder, mmap=False)
    disk = _dir_bytes(folder, files)
    extra = _dir_bytes(folder, [RESCORE_CODES, RESCORE_SCALE]) if ix.manifest["rescore"] else 0
    return ix, {"index_disk_bytes": disk, "bytes_per_vector": disk / n, "engine_memory_bytes": ix.engine.memory_bytes(),
                "rss_delta_bytes": rss, "rescore_disk_bytes": extra}, sec, lambda: None


def run_grid(corpus: Corpus, engines, precisions, variants, rescores, threads, cal, k: int, resamples: int,
             work: str, log=print) -> list[dict]:
    from contextlib import nullcontext

    refs = {"fp32": bm.exact_top(corpus.queries, corpus.docs, k),
            "fp32_calibrated": bm.exact_top(cal.apply(corpus.queries), corpus.docs, k, transform=cal.apply)}
    fp32_ndcg = None
    if corpus.qrels is not None:
        fp32_ndcg = bm.ndcg_at_k(refs["fp32"], corpus.query_ids, corpus.corpus_ids, corpus.qrels, k)
    rows = []
    pg_ctx = nullcontext()
    if "pgvector" in engines:
        from bitembed_jax.index.pg_server import PgServer
        pg_ctx = PgServer()
    with pg_ctx as pg:
        for engine in engines:
            for p in precisions:
                if engine == "pgvector" and p not in ("fp32", "fp32-calibrated", "int8", "binary"):
                    continue
                coding = Coding(p, corpus.docs.shape[1], None if p == "fp32" else cal)
                for variant in variants:
                    rows += _one_setting(engine, coding, corpus, variant, rescores, threads, refs, k, resamples,
                                         fp32_ndcg, work, pg, log)
    return rows


def _one_setting(engine, coding, corpus, variant, rescores, threads, refs, k, resamples, fp32_ndcg, work, pg, log):
    hnsw = Hnsw() if variant == "hnsw" else None
    ix, size, sec, close = _engine_setting(engine, coding, corpus, hnsw, work, pg)
    rows = []
    for m in (rescores if coding.rescorable else [1]):
        def search(q, t, m=m):
            return ix.search(q, k, m, t)

        found = search(corpus.queries, 1)[0]
        row = {"corpus": corpus.name, "n": len(corpus.docs), "dim": corpus.docs.shape[1], "engine": engine,
               "precision": coding.precision, "variant": variant, "rescore": m, "build_s": sec, **size,
               **_quality(found, refs, corpus, k, resamples, fp32_ndcg), **_speed(search, corpus.queries, threads)}
        log(json.dumps({key: (round(v, 4) if isinstance(v, float) else v) for key, v in row.items()}))
        rows.append(row)
    close()
    return rows


def _beir_corpus(args, load_encoder) -> Corpus:
    from bitembed_jax.eval.local import embed_texts, read_beir

    data = read_beir(args.retrieval)
    if args.corpus_vectors or args.query_vectors:
        docs, queries = _given(args.corpus_vectors, "--corpus-vectors", len(data.corpus_ids)), \
            _given(args.query_vectors, "--query-vectors", len(data.query_ids))
    else:
        enc = load_encoder()
        docs = embed_texts(enc, data.corpus_texts, batch_size=args.batch_size)
        queries = embed_texts(enc, data.query_texts, batch_size=args.batch_size, prompt=enc.prompts.get("query", ""))
    return Corpus(data.name, docs, queries, data.query_ids, data.corpus_ids, data.qrels)


def _given(path: str | None, flag: str, rows: int) -> np.ndarray:
    """Vectors the model made earlier (``encode``), in the BEIR files' order (judged queries only)."""
    if not path or not os.path.exists(path):
        raise FileNotFoundError(f"{flag} {path} not found (give both --corpus-vectors and --query-vectors)")
    x = np.load(path, allow_pickle=False)
    if x.ndim != 2 or x.dtype != np.float32 or len(x) != rows:
        raise ValueError(f"{flag} {path}: {x.dtype} {x.shape}; expected float32 ({rows}, dim)")
    return x


def _stats_vectors(args, load_encoder) -> tuple[np.ndarray, str]:
    """The real vectors whose statistics the synthetic corpus copies: a .npy from ``encode``, or a BEIR folder's
    passages encoded here."""
    from bitembed_jax.eval.local import embed_texts, read_beir

    if not args.stats_from:
        raise ValueError("--synthetic needs --stats-from: a BEIR folder, or FILE.npy of the model's vectors")
    if args.stats_from.endswith(".npy"):
        if not os.path.exists(args.stats_from):
            raise FileNotFoundError(f"--stats-from {args.stats_from} not found")
        return np.load(args.stats_from, allow_pickle=False), os.path.basename(args.stats_from)
    data = read_beir(args.stats_from)
    return embed_texts(load_encoder(), data.corpus_texts, batch_size=args.batch_size), data.name


def _synthetic_corpus(args, load_encoder) -> Corpus:
    from bitembed_jax.index.synthetic import draw

    real, name = _stats_vectors(args, load_encoder)
    unit = bool(np.allclose(np.linalg.norm(real, axis=1), 1.0, atol=1e-3))
    mean, std = real.mean(axis=0), real.std(axis=0)
    docs = draw(mean, std, args.synthetic, seed=0, unit=unit)
    queries = draw(mean, std, args.synthetic_queries, seed=1, unit=unit)
    return Corpus(f"synthetic-{args.synthetic}-from-{len(real)}-vectors-of-{name}", docs, queries)


def run_bench_cli(args) -> None:
    from bitembed_jax.encode import Encoder
    from bitembed_jax.index.bench_report import write_report

    engines = _list(args.engines, ENGINES, "--engines")
    precisions = list(PRECISIONS) if args.precision == "all" else _list(args.precision, PRECISIONS, "--precision")
    variants = _list(args.variants, ("flat", "hnsw"), "--variants")
    rescores, threads = _ints(args.rescore, "--rescore"), _ints(args.threads, "--threads")
    out = os.path.abspath(args.output)
    if os.path.exists(os.path.join(out, "index_bench.json")) and not args.overwrite:
        raise FileExistsError(f"--output {out} holds a bench; pass --overwrite to replace it")
    if args.retrieval and not os.path.isdir(args.retrieval):
        raise FileNotFoundError(f"--retrieval {args.retrieval} not found")
    os.makedirs(out, exist_ok=True)
    def load_encoder():  # only when texts are encoded
        return Encoder.from_pretrained(args.model, max_length=args.max_length)

    corpus = (_beir_corpus if args.retrieval else _synthetic_corpus)(args, load_encoder)
    gc.collect()
    cal = enc_cal = None
    if args.calibration in ("auto", "model"):
        from bitembed_jax.io.model_dir import read_config
        from bitembed_jax.quant.calibration import model_calibration

        enc_cal = model_calibration(read_config(args.model)[1])
        if args.calibration == "model" and enc_cal is None:
            raise ValueError(f"--calibration model: {args.model} has none (bitembed-jax calibrate adds one)")
    sample = corpus.docs[np.random.default_rng(0).permutation(len(corpus.docs))[:100_000]]
    cal = enc_cal or fit_calibration(sample, f"{len(sample)} vectors of the indexed corpus ({corpus.name})")
    work = os.path.join(out, "indexes")
    try:
        rows = run_grid(corpus, engines, precisions, variants, rescores, threads, cal, args.k, args.bootstrap, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    meta = {"corpus": corpus.name, "n": len(corpus.docs), "queries": len(corpus.queries), "dim": corpus.docs.shape[1],
            "model": os.path.abspath(args.model), "calibration": describe(cal), "k": args.k,
            "host": _host(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    write_report(out, meta, rows)
    print(f"wrote {len(rows)} rows to {out}/index_bench.md (.json, .png)")


def _host() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"
