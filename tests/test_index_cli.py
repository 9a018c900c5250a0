"""bitembed-jax index build / search / bench as a user runs them, on a tiny model."""
import json
import os
import shutil

import numpy as np
import pytest

from bitembed_jax.cli import main

TEXTS = ["plants make food from light", "the capital of france is paris", "rivers run to the sea",
         "cats and dogs are pets", "a leaf turns sunlight into sugar", "mountains are high", "paris has museums",
         "fish swim in rivers"]


@pytest.fixture(scope="module")
def setup(tiny_qwen3, tmp_path_factory):
    root = tmp_path_factory.mktemp("index_cli")
    model = str(root / "model")
    assert main(["convert", "--hf", tiny_qwen3, "--out", model, "--pooling", "mean"]) == 0
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(TEXTS) + "\n")
    return root, model, str(corpus)


def _hits(out: str) -> list[dict]:
    return [json.loads(line) for line in out.strip().splitlines()]


def test_build_search_round_trip_and_its_errors(setup, capsys):
    from bitembed_jax import Encoder
    from bitembed_jax.index.coding import Coding, fit_calibration

    root, model, corpus = setup
    idx = str(root / "idx")
    assert main(["index", "build", "--model", model, "--input", corpus, "--out", idx, "--engine", "faiss",
                 "--precision", "int8"]) == 0
    capsys.readouterr()
    assert main(["index", "search", "--index", idx, "--query", TEXTS[1], "--query", TEXTS[4], "--k", "3",
                 "--rescore", "2"]) == 0
    hits = _hits(capsys.readouterr().out)
    # the same ranking from numpy: the corpus's calibration, int8 codes of the float vectors, rescoring over all
    enc = Encoder.from_pretrained(model)
    docs, q = enc.encode(TEXTS), enc.encode([TEXTS[1], TEXTS[4]])
    cal = fit_calibration(docs, "")
    st = Coding("int8", docs.shape[1], cal).rescore_store(docs)
    want = np.argsort(-(cal.apply(q) @ (st.codes * st.scale[:, None]).T), axis=1)[:, :3]
    assert [[h["row"] for h in r["hits"]] for r in hits] == want.tolist()
    assert hits[0]["hits"][0]["row"] == 1

    errors = {  # one line each, exit 2, before any model is loaded where possible
        "exists and is not empty; pass --overwrite": ["index", "build", "--model", model, "--input", corpus, "--out", idx],
        "holds int8 vectors, asked for binary": ["index", "search", "--index", idx, "--query", "x",
                                                 "--precision", "binary"],
        "not a bitembed-jax index": ["index", "search", "--index", str(root), "--query", "x"],
        "--index /nope not found": ["index", "search", "--index", "/nope", "--query", "x"],
        "this index holds 64-dim vectors": ["index", "search", "--index", idx, "--queries", str(root / "q.npy")],
    }
    np.save(root / "q.npy", np.ones((2, 5), np.float32))
    other = str(root / "other-model")
    shutil.copytree(model, other)
    with open(os.path.join(other, "bitembed_config.json")) as f:
        meta = json.load(f)
    meta["prompts"] = {"query": "q: "}  # another model's vectors, as far as the index can tell
    with open(os.path.join(other, "bitembed_config.json"), "w") as f:
        json.dump(meta, f)
    errors["built with another model"] = ["index", "search", "--index", idx, "--model", other, "--query", "x"]
    for expect, argv in errors.items():
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert expect in err and err.startswith("error: ") and "\n" not in err, (argv, err)


def test_build_from_encoded_codes_and_bench(setup, tmp_path, capsys):
    root, model, corpus = setup
    codes = str(tmp_path / "codes.npz")
    assert main(["encode", "--model", model, "--input", corpus, "--out", codes, "--precision", "binary",
                 "--calibrate-on-input"]) == 0
    idx = str(tmp_path / "idx")
    assert main(["index", "build", "--model", model, "--input", codes, "--out", idx, "--engine", "usearch",
                 "--precision", "binary", "--hnsw"]) == 0
    capsys.readouterr()
    assert main(["index", "search", "--index", idx, "--query", TEXTS[0], "--k", "20"]) == 0
    hits = _hits(capsys.readouterr().out)[0]["hits"]
    assert sorted(h["row"] for h in hits) == list(range(len(TEXTS)))  # k > n: every row once, no padding rows
    assert main(["index", "search", "--index", idx, "--query", TEXTS[0], "--rescore", "4"]) == 2
    assert "keeps no int8 codes" in capsys.readouterr().err

    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    (beir / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "text": t}) + "\n"
                                               for i, t in enumerate(TEXTS)))
    (beir / "queries.jsonl").write_text(json.dumps({"_id": "q0", "text": "where do plants get food"}) + "\n" +
                                        json.dumps({"_id": "q1", "text": "museums of paris"}) + "\n")
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td0\t1\nq1\td6\t1\n")
    out = str(tmp_path / "bench")
    assert main(["index", "bench", "--model", model, "--retrieval", str(beir), "--engines", "usearch,faiss",
                 "--precision", "fp32,binary", "--variants", "flat", "--rescore", "1,4", "--threads", "1",
                 "--k", "3", "--bootstrap", "50", "--output", out]) == 0
    rows = json.load(open(os.path.join(out, "index_bench.json")))["rows"]
    assert [(r["engine"], r["precision"], r["rescore"]) for r in rows] == [
        ("usearch", "fp32", 1), ("usearch", "binary", 1), ("usearch", "binary", 4),
        ("faiss", "fp32", 1), ("faiss", "binary", 1), ("faiss", "binary", 4)]
    fp32 = rows[0]
    assert fp32["recall_fp32"] == 1.0 and all("ndcg_at_10" in r for r in rows)
    assert all(r["bytes_per_vector"] > 0 and r["qps_1t"] > 0 for r in rows)
    assert os.path.exists(os.path.join(out, "index_bench.png")) and not os.path.exists(os.path.join(out, "indexes"))
