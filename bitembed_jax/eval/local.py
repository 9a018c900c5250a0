"""Local evaluation without network: BEIR-format retrieval and STS files, scored at every precision.

Retrieval metrics come from pytrec_eval (trec_eval), STS from scipy's Spearman correlation; this file
only reads the data, ranks with ``quant.embedding.similarity`` (the stored-precision score) and hands
the rankings over. The scorers take precomputed embeddings, so they run without a model.
"""
import dataclasses
import json
import os

import numpy as np

from bitembed_jax.quant.calibration import Calibration
from bitembed_jax.quant.storage import StoredEmbeddings, encode_storage, model_storage, similarity

NDCG_K, MRR_K, RECALL_K = 10, 10, 100
_SCORE_BLOCK = 2 ** 24  # query x corpus scores held at once


def _fail(path: str, line: int, why: str):
    raise ValueError(f"{path}:{line}: {why}")


# ----------------------------------------------------------------------------- readers

@dataclasses.dataclass
class RetrievalData:
    name: str
    corpus_ids: list[str]
    corpus_texts: list[str]
    query_ids: list[str]
    query_texts: list[str]
    qrels: dict[str, dict[str, int]]  # only known ids, only queries with a relevant document
    skipped: dict[str, int]  # qrels lines dropped, by reason


def _text_lines(path: str):
    """(line number, line) of a UTF-8 text file; a file in another encoding is an error naming it and the line."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                yield n, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{n}: not UTF-8 text ({e.reason}); save the file as UTF-8") from None


def _read_jsonl(path: str, kind: str) -> tuple[list[str], list[str]]:
    """ids and texts; a document's title goes before its text, as mteb joins them."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found (BEIR layout: corpus.jsonl, queries.jsonl, qrels/<split>.tsv)")
    ids, texts, seen = [], [], set()
    for n, line in _text_lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            _fail(path, n, f"not valid JSON ({e.msg})")
        if not isinstance(row, dict) or "_id" not in row or not isinstance(row.get("text"), str):
            _fail(path, n, f"a {kind} needs \"_id\" and a string \"text\"")
        rid = str(row["_id"])
        if rid in seen:
            _fail(path, n, f"duplicate _id {rid!r}")
        seen.add(rid)
        title = row.get("title") or ""
        ids.append(rid)
        texts.append(f"{title} {row['text']}".strip() if title else row["text"].strip())
    if not ids:
        raise ValueError(f"{path}: no {kind}s")
    return ids, texts


def _tsv_rows(path: str, header: list[str], hint: str):
    """(line number, 3 columns) of a tab-separated file with a fixed header; blank lines skipped."""
    lines = _text_lines(path)
    got = next(lines, (1, ""))[1].rstrip("\r\n").split("\t")
    if got[:len(header)] != header:
        _fail(path, 1, f"header must be {hint}, got {got}")
    for n, line in lines:
        if not line.strip():
            continue
        cols = line.rstrip("\r\n").split("\t")
        if len(cols) != 3:
            _fail(path, n, f"expected 3 tab-separated columns, got {len(cols)}")
        yield n, cols


def _read_qrels(path: str, query_ids, corpus_ids):
    """query -> {doc: relevance} for known ids; unknown ids and unjudged queries are counted, not fatal."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found (qrels/<split>.tsv with header query-id, corpus-id, score)")
    known_q, known_d = set(query_ids), set(corpus_ids)
    qrels: dict[str, dict[str, int]] = {}
    skipped = {"unknown_query_id": 0, "unknown_corpus_id": 0, "queries_without_relevant": 0}
    for n, cols in _tsv_rows(path, ["query-id", "corpus-id", "score"], "query-id<TAB>corpus-id<TAB>score"):
        try:
            rel = int(cols[2])
        except ValueError:
            _fail(path, n, f"score must be an integer, got {cols[2]!r}")
        if cols[0] not in known_q:
            skipped["unknown_query_id"] += 1
        elif cols[1] not in known_d:
            skipped["unknown_corpus_id"] += 1
        else:
            qrels.setdefault(cols[0], {})[cols[1]] = rel
    # as mteb does: a query with no relevant document has no meaningful score
    for q in [q for q, docs in qrels.items() if max(docs.values()) <= 0]:
        del qrels[q]
        skipped["queries_without_relevant"] += 1
    if not qrels:
        raise ValueError(f"{path}: no judged query with a relevant document among the known ids ({skipped})")
    return qrels, skipped


def read_beir(data_dir: str, split: str = "test") -> RetrievalData:
    """A BEIR folder; only the judged queries are kept (the others cannot be scored)."""
    corpus_ids, corpus_texts = _read_jsonl(os.path.join(data_dir, "corpus.jsonl"), "document")
    query_ids, query_texts = _read_jsonl(os.path.join(data_dir, "queries.jsonl"), "query")
    qrels, skipped = _read_qrels(os.path.join(data_dir, "qrels", f"{split}.tsv"), query_ids, corpus_ids)
    judged = [i for i, q in enumerate(query_ids) if q in qrels]
    return RetrievalData(os.path.basename(os.path.normpath(data_dir)), corpus_ids, corpus_texts,
                         [query_ids[i] for i in judged], [query_texts[i] for i in judged], qrels, skipped)


@dataclasses.dataclass
class StsData:
    name: str
    scores: np.ndarray
    s1: list[str]
    s2: list[str]


def read_sts(path: str, limit: int | None = None) -> StsData:
    """A TSV with header score<TAB>s1<TAB>s2; ``limit`` keeps the first pairs."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found")
    scores, s1, s2 = [], [], []
    for n, cols in _tsv_rows(path, ["score", "s1", "s2"], "score<TAB>s1<TAB>s2"):
        if limit is not None and len(scores) >= limit:
            break
        try:
            scores.append(float(cols[0]))
        except ValueError:
            _fail(path, n, f"score must be a number, got {cols[0]!r}")
        s1.append(cols[1])
        s2.append(cols[2])
    if len(scores) < 2:
        raise ValueError(f"{path}: need at least 2 pairs for a correlation, got {len(scores)}")
    return StsData(os.path.splitext(os.path.basename(path))[0], np.asarray(scores), s1, s2)


# ----------------------------------------------------------------------------- metrics

def _rows(x, start: int, stop: int):
    """Rows [start, stop) of a float array or of StoredEmbeddings (whose per-vector scales follow)."""
    if isinstance(x, StoredEmbeddings):
        scale = x.scale[start:stop] if x.per_vector_scale else x.scale
        return dataclasses.replace(x, codes=x.codes[start:stop], scale=scale)
    return x[start:stop]


def _mean(per_query: dict, key: str) -> float:
    return float(np.mean([v[key] for v in per_query.values()]))


def _top_with_ties(scores: np.ndarray, k: int) -> list[np.ndarray]:
    """Per row, the indices scoring at least the k-th best: the k best whatever the tie order."""
    if scores.shape[1] <= k:
        return [np.arange(scores.shape[1])] * scores.shape[0]
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1]
    return [np.flatnonzero(row >= t) for row, t in zip(scores, kth)]


def retrieval_scores(queries, corpus, query_ids, corpus_ids, qrels, precision: str | None = None) -> dict:
    """nDCG@10, MRR@10 and Recall@100 (means over the judged queries) of ranking ``corpus`` by
    ``similarity`` for each query. ``queries``/``corpus`` are float (n, d) arrays or StoredEmbeddings
    (queries may be float and get encoded at ``precision``)."""
    import pytrec_eval

    n_docs = len(corpus_ids)
    block = max(1, _SCORE_BLOCK // n_docs)
    keep = max(NDCG_K, RECALL_K)
    run, run_mrr = {}, {}
    for s in range(0, len(query_ids), block):
        sims = similarity(_rows(queries, s, s + block), corpus, precision)
        for qid, row, idx in zip(query_ids[s: s + block], sims, _top_with_ties(sims, keep)):
            run[qid] = {corpus_ids[i]: float(row[i]) for i in idx}
            # trec_eval's order (score, then doc id, both descending) cut at 10: MRR@10 = recip_rank of it
            top = sorted(run[qid].items(), key=lambda kv: (kv[1], kv[0]), reverse=True)[:MRR_K]
            run_mrr[qid] = dict(top)
    per_query = pytrec_eval.RelevanceEvaluator(qrels, {f"ndcg_cut.{NDCG_K}", f"recall.{RECALL_K}"}).evaluate(run)
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(run_mrr)
    return {f"ndcg_at_{NDCG_K}": _mean(per_query, f"ndcg_cut_{NDCG_K}"), f"mrr_at_{MRR_K}": _mean(rr, "recip_rank"),
            f"recall_at_{RECALL_K}": _mean(per_query, f"recall_{RECALL_K}")}


def pairwise_similarity(a, b, precision: str | None = None, block: int = 512) -> np.ndarray:
    """similarity(a[i], b[i]) for each row, in blocks so only block x block scores exist at once."""
    out = [np.diag(similarity(_rows(a, s, s + block), _rows(b, s, s + block), precision))
           for s in range(0, len(a), block)]
    return np.concatenate(out).astype(np.float64)


def sts_spearman(emb1, emb2, gold, precision: str | None = None) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(pairwise_similarity(emb1, emb2, precision), gold).statistic)


# ----------------------------------------------------------------------------- one pass, every precision

def embed_texts(encoder, texts, *, batch_size: int, prompt: str = "") -> np.ndarray:
    """fp32 embeddings, encoded in order of length so each batch pads little; returned in input order."""
    order = np.argsort([len(t) for t in texts], kind="stable")
    vecs = encoder.encode([texts[i] for i in order], batch_size=batch_size, prompt=prompt)
    out = np.empty_like(vecs)
    out[order] = vecs
    return out


def _point(precision, dim, full_dim, stored, n_vectors, calibration) -> dict:
    return {"precision": precision, "dim": dim or full_dim, "calibration": calibration,
            "bytes_per_vector": stored.nbytes_per_vector, "n_vectors": n_vectors,
            "index_bytes": stored.nbytes_per_vector * n_vectors}


def calibrations(encoder, sources, corpus: np.ndarray) -> list[tuple[str, Calibration | None]]:
    """(label, calibration) for each source asked: "model" the folder's statistics (labelled "none" when it
    has none), "none" the codes without per-dimension statistics, "corpus" fitted on ``corpus`` (the vectors
    to be stored: the user's own corpus at indexing time) with the folder's method, else standardize. Repeats
    are dropped."""
    out = {}
    for source in sources:
        if source == "model" and encoder.calibration is not None:
            out.setdefault("model", encoder.calibration)
        elif source == "corpus":
            method = encoder.calibration.method if encoder.calibration is not None else "standardize"
            out.setdefault("corpus", Calibration.fit(corpus, method, source=f"the {len(corpus)} corpus vectors"))
        elif source in ("model", "none"):
            out.setdefault("none", None)
        else:
            raise ValueError(f"calibration source must be model, none or corpus, got {source!r}")
    return list(out.items())


def _settings(precisions, dims, cals):
    """(dim, precision, label, calibration) to score; fp32 is never calibrated, so it is scored once per dim."""
    for dim in dims:
        for i, (label, cal) in enumerate(cals):
            for p in precisions:
                if p != "fp32" or i == 0:
                    yield dim, p, ("none" if p == "fp32" else label), cal


def _store(encoder, vecs, precision, dim, label, cal):
    if label == "model" or (cal is None and encoder.calibration is None):
        return model_storage(vecs, precision, encoder.meta, dim)  # whatever the folder holds, as before
    return encode_storage(vecs, precision, dim, calibration=cal)


def evaluate_retrieval(encoder, data: RetrievalData, precisions, dims=(None,), *, batch_size: int = 32,
                       query_prompt: str = "", calibration=("model",)) -> list[dict]:
    """One row per (dim, calibration, precision): the corpus and queries are encoded once, then quantized."""
    docs = embed_texts(encoder, data.corpus_texts, batch_size=batch_size)
    queries = embed_texts(encoder, data.query_texts, batch_size=batch_size, prompt=query_prompt)
    rows = []
    for dim, p, label, cal in _settings(precisions, dims, calibrations(encoder, calibration, docs)):
        stored = _store(encoder, docs, p, dim, label, cal)
        scores = retrieval_scores(_store(encoder, queries, p, dim, label, cal), stored, data.query_ids,
                                  data.corpus_ids, data.qrels)
        rows.append({"dataset": data.name, "metric": f"ndcg_at_{NDCG_K}", "score": scores[f"ndcg_at_{NDCG_K}"],
                     **scores, **_point(p, dim, docs.shape[1], stored, len(docs), label)})
    return rows


def evaluate_sts(encoder, data: StsData, precisions, dims=(None,), *, batch_size: int = 32,
                 prompt: str = "", calibration=("model",)) -> list[dict]:
    """One row per (dim, calibration, precision); both sides get ``prompt`` (a symmetric task); a "corpus"
    calibration is fitted on both sides' vectors."""
    a = embed_texts(encoder, data.s1, batch_size=batch_size, prompt=prompt)
    b = embed_texts(encoder, data.s2, batch_size=batch_size, prompt=prompt)
    rows = []
    for dim, p, label, cal in _settings(precisions, dims, calibrations(encoder, calibration, np.concatenate([a, b]))):
        sa, sb = _store(encoder, a, p, dim, label, cal), _store(encoder, b, p, dim, label, cal)
        rho = sts_spearman(sa, sb, data.scores)
        rows.append({"dataset": data.name, "metric": "spearman", "score": rho, "spearman": rho,
                     **_point(p, dim, a.shape[1], sa, 2 * len(a), label)})
    return rows
