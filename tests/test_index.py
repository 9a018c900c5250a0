"""bitembed-jax index: engine results against exact numpy search on the same codes, rescoring against numpy,
usearch's padding, repeatable HNSW, the manifest's checks (numpy vectors: no model)."""
import json
import os

import numpy as np
import pytest

from bitembed_jax.index.coding import Coding, fit_calibration
from bitembed_jax.index.engine import Hnsw
from bitembed_jax.index.folder import MANIFEST, VectorIndex
from bitembed_jax.quant.storage import hamming

D, N, NQ, K = 96, 400, 12, 10


def _vectors(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, D)).astype(np.float32) + np.linspace(-1, 1, D, dtype=np.float32)  # a mean offset
    x[:, 3] *= 8  # a massive dimension, as LLM vectors have
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def data():
    docs, queries = _vectors(N, 0), _vectors(NQ, 1)
    return docs, queries, fit_calibration(docs, "test corpus")


def _coding(precision, cal):
    return Coding(precision, D, None if precision == "fp32" else cal)


def _numpy_scores(engine, coding, queries, docs):
    """The first-stage score each engine computes, from numpy on our codes (higher = closer)."""
    q, d = coding.engine_vectors(queries), coding.engine_vectors(docs)
    if coding.kind == "b1":
        return -hamming(q, d).astype(np.float64)
    qf, df = q.astype(np.float64), d.astype(np.float64)
    if coding.kind == "i8" and engine == "usearch":  # cosine of the codes
        qf /= np.linalg.norm(qf, axis=1, keepdims=True)
        df /= np.linalg.norm(df, axis=1, keepdims=True)
    return qf @ df.T


def _assert_top_k(keys, ref_scores, k, rtol=1e-4):
    """Tie-aware: the returned rows' exact scores are the k best exact scores, in order, with no repeats."""
    assert (keys >= 0).all() and all(len(set(r)) == k for r in keys)
    got = np.take_along_axis(ref_scores, keys, axis=1)
    want = -np.sort(-ref_scores, axis=1)[:, :k]
    np.testing.assert_allclose(got, want, rtol=rtol, atol=1e-3 * np.abs(want).max())


@pytest.mark.parametrize("engine", ["usearch", "faiss"])
@pytest.mark.parametrize("precision", ["fp32", "fp32-calibrated", "int8", "int4", "int2", "binary"])
def test_flat_search_equals_numpy_on_the_codes(data, tmp_path, engine, precision):
    docs, queries, cal = data
    coding = _coding(precision, cal)
    ix = VectorIndex.build(str(tmp_path / "ix"), coding.engine_vectors(docs), coding, engine,
                           rescore_store=coding.rescore_store(docs) if coding.rescorable else None)
    keys, scores = VectorIndex.open(str(tmp_path / "ix")).search(queries, K)
    _assert_top_k(keys, _numpy_scores(engine, coding, queries, docs), K)
    assert ix.manifest["precision"] == precision and ix.manifest["count"] == N


@pytest.mark.parametrize("engine", ["usearch", "faiss"])
@pytest.mark.parametrize("precision", ["binary", "int4"])
def test_rescoring_equals_numpy(data, tmp_path, engine, precision):
    """x4: the first stage's 40 candidates re-ranked by float query . int8 codes x scale, as numpy does it."""
    docs, queries, cal = data
    coding = _coding(precision, cal)
    ix = VectorIndex.build(str(tmp_path / "ix"), coding.engine_vectors(docs), coding, engine,
                           rescore_store=coding.rescore_store(docs))
    cand, _ = ix.search(queries, 4 * K)
    keys, scores = ix.search(queries, K, rescore=4)
    st = coding.rescore_store(docs)
    full = cal.apply(queries).astype(np.float64) @ (st.codes.astype(np.float64) * st.scale[:, None]).T
    for i in range(NQ):
        c = cand[i]
        best = c[np.argsort(-full[i, c], kind="stable")[:K]]
        np.testing.assert_allclose(scores[i], full[i, best], rtol=1e-4)
        assert set(keys[i]) == set(best) or np.allclose(np.sort(full[i, keys[i]]), np.sort(full[i, best]))
    assert np.mean(keys[:, 0] == np.argmax(full, axis=1)) > 0.9  # rescoring finds the int8 best


@pytest.mark.parametrize("engine", ["usearch", "faiss"])
@pytest.mark.parametrize("variant", [None, Hnsw()])
def test_short_results_are_padded_not_nan(data, tmp_path, engine, variant):
    """k > n: usearch pads with NaN distances and an unused key; we return -1 / -inf, rescored or not."""
    docs, queries, cal = data
    coding = _coding("binary", cal)
    ix = VectorIndex.build(str(tmp_path / "ix"), coding.engine_vectors(docs[:5]), coding, engine, hnsw=variant,
                           rescore_store=coding.rescore_store(docs[:5]))
    for m in (1, 4):
        keys, scores = ix.search(queries, 8, rescore=m)
        assert keys.shape == (NQ, 8) and not np.isnan(scores).any()
        assert (np.sort(keys[:, :5], axis=1) == np.arange(5)).all()
        assert (keys[:, 5:] == -1).all() and np.isneginf(scores[:, 5:]).all()


@pytest.mark.parametrize("engine", ["usearch", "faiss"])
def test_hnsw_over_bits_is_repeatable_with_one_build_thread(data, tmp_path, engine):
    docs, queries, cal = data
    coding = _coding("binary", cal)
    runs = []
    for name in ("a", "b"):
        ix = VectorIndex.build(str(tmp_path / name), coding.engine_vectors(docs), coding, engine, hnsw=Hnsw(m=8),
                               threads=1)
        runs.append(ix.search(queries, K)[0])
    np.testing.assert_array_equal(runs[0], runs[1])
    _assert_top_k(runs[0][:, :1], _numpy_scores(engine, coding, queries, docs), 1)  # the nearest is found


def test_manifest_checks(data, tmp_path):
    docs, queries, cal = data
    coding = _coding("binary", cal)
    folder = str(tmp_path / "ix")
    VectorIndex.build(folder, coding.engine_vectors(docs), coding, "usearch", model={"fingerprint": "abc"})
    with pytest.raises(ValueError, match="holds binary vectors, asked for int8"):
        VectorIndex.open(folder, precision="int8")
    with pytest.raises(ValueError, match="built with another model"):
        VectorIndex.open(folder, model_fingerprint="other")
    ix = VectorIndex.open(folder, precision="binary", model_fingerprint="abc")
    with pytest.raises(ValueError, match=r"shape \(2, 64\); this index holds 96-dim"):
        ix.search(np.ones((2, 64), np.float32))
    with pytest.raises(ValueError, match="keeps no int8 codes to rescore"):
        ix.search(queries, rescore=4)
    with pytest.raises(FileExistsError, match="--overwrite"):
        VectorIndex.build(folder, coding.engine_vectors(docs), coding, "usearch")
    os.remove(os.path.join(folder, "vectors.npy"))
    with pytest.raises(FileNotFoundError, match="vectors.npy not found"):
        VectorIndex.open(folder)
    with open(os.path.join(folder, MANIFEST), "w") as f:
        json.dump({"format": "x"}, f)
    with pytest.raises(ValueError, match="not a bitembed-vector-index manifest"):
        VectorIndex.open(folder)


def test_pgvector_matches_numpy_and_leaves_nothing_running(data):
    """Hamming ranking in PostgreSQL + pgvector (flat and HNSW) against numpy; the SQL re-rank subquery over the
    int8 codes against numpy's int8 scores; the server started and stopped here."""
    pytest.importorskip("psycopg")
    from bitembed_jax.index.pg_server import PgServer
    from bitembed_jax.index.pgvector_engine import PgvectorIndex

    docs, queries, cal = data
    coding = _coding("binary", cal)
    ref = _numpy_scores("pgvector", coding, queries, docs)
    st = coding.rescore_store(docs)
    int8_scores = cal.apply(queries).astype(np.float64) @ (st.codes.astype(np.float64) * st.scale[:, None]).T
    with PgServer() as srv:
        pid, root = srv.proc.pid, srv.root
        flat = PgvectorIndex.build(srv.dsn, "flat", docs, coding, None)
        _assert_top_k(flat.search(queries, K)[0], ref, K)
        # fetch everything (k x 40 >= n): the re-rank subquery is then an exact int8 search
        keys = flat.search(queries, K, rescore=40, threads=2)[0]
        _assert_top_k(keys, int8_scores, K, rtol=2e-3)  # the float query goes to SQL as halfvec (fp16)
        hnsw = PgvectorIndex.build(srv.dsn, "hnsw", docs, coding, Hnsw())
        keys = hnsw.search(queries, K)[0]
        recall = np.mean([len(set(a) & set(b)) / K for a, b in zip(keys, flat.search(queries, K)[0])])
        assert recall > 0.8
        flat.close(), hnsw.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not os.path.exists(root)


def test_bench_reference_and_recall_helpers():
    from bitembed_jax.index import bench_metrics as bm

    rng = np.random.default_rng(0)
    d, q = rng.standard_normal((1000, 16)).astype(np.float32), rng.standard_normal((5, 16)).astype(np.float32)
    np.testing.assert_array_equal(bm.exact_top(q, d, 7, block=64), np.argsort(-(q @ d.T), axis=1)[:, :7])
    np.testing.assert_array_equal(bm.exact_top(q, d, 7, block=64, transform=lambda x: 2 * x + 1),
                                  np.argsort(-(q @ (2 * d + 1).T), axis=1)[:, :7])
    found = np.array([[1, 2, 3, -1], [5, 6, 7, 8]])
    np.testing.assert_allclose(bm.recall_per_query(found, np.array([[1, 2, 9, 10], [8, 7, 6, 5]])), [0.5, 1.0])
    lo, hi = bm.bootstrap_interval(np.array([0.0, 1.0] * 50), 500)
    assert lo < 0.5 < hi and hi - lo < 0.25
