"""Local evaluation: metrics against hand computation, every precision end to end with a real tiny
model, the outputs (results.json, summary.md, plot.png), and the errors a user meets."""
import argparse
import json
import math
import os

import numpy as np
import pytest

from bitembed_jax.eval import local
from bitembed_jax.eval.cli_eval import add_eval_parser
from bitembed_jax.choices import PRECISIONS
from bitembed_jax.quant.storage import bytes_per_vector, encode_storage, similarity
from tests.hf_fixtures import SHARED_DATA

STSB = os.path.join(SHARED_DATA, "stsb", "sts.tsv")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_cli(argv):
    """The eval subcommand as bitembed-jax's main runs it (parse, then args.func(args))."""
    parser = argparse.ArgumentParser()
    add_eval_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["eval", *argv])
    return args.func(args)


def unit(deg: float) -> list[float]:
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


def test_retrieval_metrics_equal_hand_computation():
    # 2-d unit vectors, so the ranking is the angular distance to the query:
    # from 0 deg: near(0) > mid(60) > 120 fillers (90..149.5) > far(180); from 180 deg the reverse
    fillers = [f"f{i}" for i in range(120)]
    corpus_ids = ["near", "mid", "far", *fillers]
    corpus = np.array([unit(0), unit(60), unit(180), *[unit(90 + 0.5 * i) for i in range(120)]], np.float32)
    query_ids = ["qa", "qb", "qc"]
    queries = np.array([unit(0), unit(0), unit(180)], np.float32)
    qrels = {"qa": {"mid": 2, "near": 0},  # one relevant at rank 2
             "qb": {"near": 1, "far": 2},  # graded: rel 1 at rank 1, rel 2 at rank 123 (past 100)
             "qc": {"mid": 1}}  # rank 122: beyond every cut-off
    got = local.retrieval_scores(queries, corpus, query_ids, corpus_ids, qrels)

    # trec_eval's nDCG: gain = relevance, discount log2(rank + 1), ideal = relevances sorted
    ndcg = [(2 / math.log2(3)) / 2, 1 / (2 + 1 / math.log2(3)), 0.0]
    mrr = [1 / 2, 1.0, 0.0]
    recall = [1.0, 1 / 2, 0.0]
    assert got["ndcg_at_10"] == pytest.approx(np.mean(ndcg), abs=1e-6)
    assert got["mrr_at_10"] == pytest.approx(np.mean(mrr), abs=1e-6)
    assert got["recall_at_100"] == pytest.approx(np.mean(recall), abs=1e-6)


def test_tied_scores_rank_as_trec_eval_does_on_the_full_run():
    """Binary scores tie a lot; keeping the top 100 with ties must score as the untruncated run."""
    import pytrec_eval

    rng = np.random.default_rng(0)
    docs, queries = rng.standard_normal((400, 16)), rng.standard_normal((30, 16))
    corpus_ids, query_ids = [f"d{i}" for i in range(400)], [f"q{i}" for i in range(30)]
    qrels = {q: {f"d{j}": int(rng.integers(1, 3)) for j in rng.choice(400, 3, replace=False)} for q in query_ids}
    sq, sd = encode_storage(queries, "binary"), encode_storage(docs, "binary")
    got = local.retrieval_scores(sq, sd, query_ids, corpus_ids, qrels)

    full = similarity(sq, sd)
    run = {q: {d: float(s) for d, s in zip(corpus_ids, row)} for q, row in zip(query_ids, full)}
    want = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100"}).evaluate(run)
    assert got["ndcg_at_10"] == pytest.approx(np.mean([v["ndcg_cut_10"] for v in want.values()]), abs=1e-9)
    assert got["recall_at_100"] == pytest.approx(np.mean([v["recall_100"] for v in want.values()]), abs=1e-9)


def test_sts_spearman_equals_hand_computation():
    a = np.array([unit(0), unit(0), unit(0)], np.float32)
    b = np.array([unit(80), unit(40), unit(10)], np.float32)  # similarities rank 1 < 2 < 3
    gold = [1.0, 3.0, 2.0]  # ranks 1, 3, 2: d = (0, -1, 1), rho = 1 - 6 * 2 / (3 * (9 - 1))
    assert local.sts_spearman(a, b, gold) == pytest.approx(0.5)


# ----------------------------------------------------------------------------- files

def write_beir(root, *, corpus=None, queries=None, qrels=None):
    os.makedirs(root / "qrels", exist_ok=True)
    docs = corpus or [{"_id": f"d{i}", "title": f"topic {i % 3}", "text": f"sentence number {i} about topic {i % 7}"}
                      for i in range(12)]
    qs = queries or [{"_id": f"q{i}", "text": f"topic {i} with words alpha"} for i in range(4)]
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in qs))
    lines = qrels or ["q0\td1\t1", "q0\td4\t2", "q1\td2\t1", "q2\td9\t1", "q3\td3\t1",
                      "q3\tnope\t1", "qX\td1\t1", "q9\td2\t1"]  # 1 unknown doc, 2 unknown queries
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(lines) + "\n")
    return root


def write_sts(path, rows=None):
    rows = rows or [(4.5, "alpha beta gamma", "alpha beta delta"), (1.0, "sentence number 3", "words words"),
                    (3.2, "topic 5 with words", "topic 5 about words"), (0.5, "delta", "gamma sentence")]
    path.write_text("score\ts1\ts2\n" + "".join(f"{s}\t{a}\t{b}\n" for s, a, b in rows))
    return path


def test_unknown_qrels_ids_are_counted_not_fatal(tmp_path):
    data = local.read_beir(str(write_beir(tmp_path / "beir")))
    assert data.skipped == {"unknown_query_id": 2, "unknown_corpus_id": 1, "queries_without_relevant": 0}
    assert data.qrels["q3"] == {"d3": 1} and set(data.query_ids) == {"q0", "q1", "q2", "q3"}
    assert data.corpus_texts[1] == "topic 1 sentence number 1 about topic 1"  # title first, as mteb joins them


def test_malformed_files_are_named_with_their_line(tmp_path):
    root = write_beir(tmp_path / "a")
    (root / "corpus.jsonl").write_text('{"_id": "d0", "text": "x"}\n\n{"_id": "d1", "text": \n')
    with pytest.raises(ValueError, match=r"corpus\.jsonl:3: not valid JSON"):
        local.read_beir(str(root))
    (root / "corpus.jsonl").write_text('{"_id": "d0", "text": "x"}\n{"_id": "d0", "text": "y"}\n')
    with pytest.raises(ValueError, match=r"corpus\.jsonl:2: duplicate _id 'd0'"):
        local.read_beir(str(root))
    root = write_beir(tmp_path / "b", queries=[{"_id": "q0", "body": "no text"}])
    with pytest.raises(ValueError, match=r"queries\.jsonl:1: a query needs"):
        local.read_beir(str(root))
    root = write_beir(tmp_path / "c", qrels=["q0\td1\t1", "q1\td2\t1", "q2\td3"])
    with pytest.raises(ValueError, match=r"test\.tsv:4: expected 3 tab-separated columns"):
        local.read_beir(str(root))
    root = write_beir(tmp_path / "d", qrels=["q0\td1\thigh"])
    with pytest.raises(ValueError, match=r"test\.tsv:2: score must be an integer"):
        local.read_beir(str(root))
    (tmp_path / "bad.tsv").write_text("score\ts1\ts2\n1.0\ta\tb\nfive\ta\tb\n")
    with pytest.raises(ValueError, match=r"bad\.tsv:3: score must be a number"):
        local.read_sts(str(tmp_path / "bad.tsv"))
    (tmp_path / "hdr.tsv").write_text("s1\ts2\tscore\n")
    with pytest.raises(ValueError, match=r"hdr\.tsv:1: header"):
        local.read_sts(str(tmp_path / "hdr.tsv"))
    with pytest.raises(FileNotFoundError, match="corpus.jsonl"):
        local.read_beir(str(tmp_path / "missing"))


# ----------------------------------------------------------------------------- real tiny model

@pytest.fixture(scope="module")
def models(tiny_qwen3, tmp_path_factory):
    from bitembed_jax.convert.hf_import import convert

    root = tmp_path_factory.mktemp("eval_models")
    return convert(tiny_qwen3, str(root / "student"), mode="bitnet"), convert(tiny_qwen3, str(root / "teacher"))


def test_every_precision_end_to_end(models, tmp_path, capsys):
    student, teacher = models
    beir, sts = write_beir(tmp_path / "beir"), write_sts(tmp_path / "pairs.tsv")
    out = tmp_path / "out"
    common = ["--model", student, "--teacher", teacher, "--retrieval", str(beir), "--sts", str(sts),
              "--batch-size", "4", "--output", str(out)]
    run_cli([*common, "--precision", "all", "--dims", "64,32"])
    assert "qrels lines skipped: unknown_query_id=2, unknown_corpus_id=1" in capsys.readouterr().out

    res = json.loads((out / "results.json").read_text())
    assert res["qrels skipped"] == "unknown_query_id=2, unknown_corpus_id=1, queries_without_relevant=0"
    rows = res["rows"]
    student_rows = [r for r in rows if r["model"] == "student"]
    assert len(student_rows) == 2 * 2 * len(PRECISIONS)  # datasets x dims x precisions
    for r in student_rows:
        assert r["bytes_per_vector"] == bytes_per_vector(r["precision"], r["dim"])
        assert r["index_bytes"] == r["n_vectors"] * r["bytes_per_vector"]
        lo = -1.0 if r["metric"] == "spearman" else 0.0
        assert r["score"] is None or lo <= r["score"] <= 1.0  # None: an undefined correlation
    assert {r["n_vectors"] for r in student_rows if r["dataset"] == "beir"} == {12}
    teacher_rows = [r for r in rows if r["model"] == "teacher"]
    assert [(r["dataset"], r["precision"], r["dim"]) for r in teacher_rows] == [
        ("beir", "fp32", 64), ("pairs", "fp32", 64)]

    assert (out / "plot.png").read_bytes()[:8] == PNG_MAGIC
    import matplotlib.image
    assert matplotlib.image.imread(str(out / "plot.png")).shape[0] > 100
    summary = (out / "summary.md").read_text()
    assert "| student | beir | ndcg_at_10 | int2 | 32 |" in summary and "| teacher | pairs | spearman |" in summary

    with pytest.raises(FileExistsError, match="--overwrite"):
        run_cli(common)
    run_cli([*common, "--precision", "fp32,int8", "--overwrite"])
    assert len(json.loads((out / "results.json").read_text())["rows"]) == 2 * 2 + 2


@pytest.fixture(scope="module")
def encoder(models):
    from bitembed_jax.encode import Encoder

    return Encoder.from_pretrained(models[0])


def test_sweep_scores_what_encoder_encode_stores(encoder, tmp_path):
    """Encoding once and quantizing per precision = Encoder.encode at that precision and dim."""
    data = local.read_beir(str(write_beir(tmp_path / "beir")))
    rows = local.evaluate_retrieval(encoder, data, ["fp32", "int4", "binary"], [32], batch_size=4)
    for r in rows:
        q = encoder.encode(data.query_texts, batch_size=4, precision=r["precision"], dim=32)
        d = encoder.encode(data.corpus_texts, batch_size=4, precision=r["precision"], dim=32)
        want = local.retrieval_scores(q, d, data.query_ids, data.corpus_ids, data.qrels)
        assert {k: r[k] for k in want} == pytest.approx(want, abs=1e-6)
        assert r["bytes_per_vector"] == q.nbytes_per_vector and r["index_bytes"] == d.codes.nbytes + (
            d.scale.nbytes if d.per_vector_scale else 0)


def test_sts_on_real_pairs(encoder):
    data = local.read_sts(STSB, limit=200)
    assert len(data.s1) == 200 and data.scores.min() >= 0 and data.scores.max() <= 5
    rows = local.evaluate_sts(encoder, data, ["fp32", "int8", "binary"], batch_size=8)
    for r in rows:  # a random tiny model: near 0, but a real correlation
        assert np.isfinite(r["spearman"]) and -1.0 <= r["spearman"] <= 1.0
        assert r["n_vectors"] == 400


def test_bad_options_fail_before_work(models, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a bitembed-jax model folder"):
        run_cli(["--model", str(tmp_path), "--sts", "x.tsv", "--output", str(tmp_path / "o")])
    with pytest.raises(ValueError, match="nothing to evaluate"):
        run_cli(["--model", models[0], "--output", str(tmp_path / "o")])
    with pytest.raises(ValueError, match="--precision takes"):
        run_cli(["--model", models[0], "--sts", "x.tsv", "--precision", "fp16", "--output", str(tmp_path / "o")])
    with pytest.raises(ValueError, match=r"--dims: dim must be in 1\.\.64"):
        run_cli(["--model", models[0], "--sts", str(write_sts(tmp_path / "p.tsv")), "--dims", "128",
                 "--output", str(tmp_path / "o")])


def test_the_shipped_sample_sts_file_is_what_the_readme_evaluates():
    path = os.path.join(os.path.dirname(__file__), "..", "bitembed_jax", "data", "sample", "sts.tsv")
    with open(os.path.join(os.path.dirname(__file__), "..", "README.md"), encoding="utf-8") as f:
        assert "--sts bitembed_jax/data/sample/sts.tsv" in f.read()
    data = local.read_sts(path)
    pairs = list(zip(data.s1, data.s2))
    assert len(pairs) == 36 and len(set(pairs)) == 36 and all(a != b for a, b in pairs)
    assert data.scores.min() == 0.0 and data.scores.max() == 5.0
