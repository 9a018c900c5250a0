"""What the index bench measures, as pure functions of result rows (numpy; pytrec_eval for nDCG)."""
import time

import numpy as np


def exact_top(queries: np.ndarray, docs: np.ndarray, k: int, block: int = 65536, transform=None) -> np.ndarray:
    """(nq, k) int64 rows of the k largest inner products, in blocks of ``block`` documents (a 1M corpus never
    makes a (nq, n) matrix, nor a transformed copy: ``transform`` maps each block, e.g. a calibration); ties
    broken by the lower row."""
    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 0), np.int64)
    for s in range(0, len(docs), block):
        chunk = np.asarray(docs[s:s + block], np.float32)
        sc = queries @ (chunk if transform is None else transform(chunk)).T
        best_s = np.concatenate([best_s, sc], axis=1)
        best_i = np.concatenate([best_i, np.broadcast_to(np.arange(s, s + sc.shape[1]), sc.shape)], axis=1)
        order = np.lexsort((best_i, -best_s), axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(best_s, order, 1), np.take_along_axis(best_i, order, 1)
    return best_i


def recall_per_query(found: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """|found ∩ reference| / |reference| per row (padding -1 never matches)."""
    return np.array([len(np.intersect1d(f[f >= 0], r)) / len(r) for f, r in zip(found, reference)])


def bootstrap_interval(values: np.ndarray, resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean over queries (resampled with replacement)."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (resamples, len(values)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def ndcg_at_k(found: np.ndarray, query_ids, corpus_ids, qrels: dict, k: int = 10) -> float:
    """Mean nDCG@k (trec_eval via pytrec_eval) of the ranked rows: rank r scores k - r."""
    import pytrec_eval

    run = {qid: {corpus_ids[d]: float(k - r) for r, d in enumerate(row[:k]) if d >= 0}
           for qid, row in zip(query_ids, found)}
    per = pytrec_eval.RelevanceEvaluator(qrels, {f"ndcg_cut.{k}"}).evaluate(run)
    return float(np.mean([v[f"ndcg_cut_{k}"] for v in per.values()]))


def queries_per_second(search, queries: np.ndarray, threads: int, min_seconds: float = 0.3) -> float:
    """Batch throughput: all queries at once with ``threads`` threads, repeated for at least ``min_seconds``."""
    search(queries[:2], threads)  # warm-up (first-touch of memory maps, SQL plans)
    done, t0 = 0, time.perf_counter()
    while True:
        search(queries, threads)
        done += len(queries)
        el = time.perf_counter() - t0
        if el >= min_seconds:
            return done / el


def latencies_ms(search, queries: np.ndarray, limit: int = 100) -> tuple[float, float]:
    """p50 and p99 of one query at a time (one thread), over at most ``limit`` queries."""
    ts = []
    for i in range(min(limit, len(queries))):
        t = time.perf_counter()
        search(queries[i:i + 1], 1)
        ts.append((time.perf_counter() - t) * 1e3)
    return float(np.percentile(ts, 50)), float(np.percentile(ts, 99))
