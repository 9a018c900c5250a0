"""Calibration as a user runs it on a tiny model: ``bitembed-jax calibrate`` into a model folder, ``encode`` with
the folder's statistics or the corpus's own, exports carrying them, ``eval --calibration``, and eval naming a
model by its folder."""
import json
import shutil

import numpy as np
import pytest

from bitembed_jax import Encoder
from bitembed_jax.cli import main
from bitembed_jax.quant.calibration import META_KEY, Calibration
from bitembed_jax.quant.storage import StoredEmbeddings, encode_storage, similarity
from tests.test_eval import run_cli, write_beir

TEXTS = ["sentence number 3 about topic 1", "alpha beta gamma", "delta", "topic 5 with words alpha",
         "words words words", "sentence number 9", "gamma delta topic", "a last sentence"]


@pytest.fixture(scope="module")
def plain_dir(tiny_qwen3, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cal") / "bitnet")
    assert main(["convert", "--hf", tiny_qwen3, "--out", out, "--bitnet", "--pooling", "mean"]) == 0
    return out


@pytest.fixture(scope="module")
def texts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("texts") / "passages.txt"
    path.write_text("\n".join(TEXTS) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def calibrated_dir(plain_dir, texts_file, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cal2") / "run1" / "model")  # as a training workdir holds it
    shutil.copytree(plain_dir, out)
    assert main(["calibrate", "--model", out, "--input", texts_file, "--batch-size", "4"]) == 0
    return out


def test_calibrate_saves_the_statistics_of_the_texts(plain_dir, calibrated_dir, texts_file, capsys):
    want = Calibration.fit(Encoder.from_pretrained(plain_dir).encode(TEXTS, batch_size=4), "standardize")
    enc = Encoder.from_pretrained(calibrated_dir)
    assert enc.calibration.same_as(want) and enc.calibration.n == len(TEXTS)
    assert Encoder.from_pretrained(plain_dir).calibration is None  # the copy was calibrated, not the source
    capsys.readouterr()
    assert main(["calibrate", "--model", calibrated_dir, "--input", texts_file]) == 2
    assert "already calibrated (standardize, 8 texts of passages.txt); pass --overwrite" in capsys.readouterr().err


def test_encode_codes_with_the_folders_statistics(calibrated_dir, texts_file, tmp_path):
    enc = Encoder.from_pretrained(calibrated_dir)
    floats = enc.encode(TEXTS, batch_size=4)
    for precision in ("int8", "int2", "binary"):
        got = enc.encode(TEXTS, batch_size=4, precision=precision)
        want = encode_storage(floats, precision, calibration=enc.calibration)
        np.testing.assert_array_equal(got.codes, want.codes)
        assert got.calibration.same_as(enc.calibration)
        plain = enc.encode(TEXTS, batch_size=4, precision=precision, calibration="none")
        np.testing.assert_array_equal(plain.codes, encode_storage(floats, precision).codes)
    out = tmp_path / "v.npz"
    assert main(["encode", "--model", calibrated_dir, "--input", texts_file, "--out", str(out), "--precision",
                 "int4", "--batch-size", "4"]) == 0
    stored = StoredEmbeddings.load(str(out))
    assert stored.calibration.same_as(enc.calibration)
    # a float query is coded with the archive's calibration: the score is the stored codes' integer dot product
    q = enc.encode(TEXTS[:2], batch_size=4)
    np.testing.assert_allclose(similarity(q, stored), similarity(encode_storage(q, "int4",
                                                                                calibration=enc.calibration), stored))


def test_an_export_carries_the_statistics(calibrated_dir, tmp_path):
    from bitembed_jax.export.hf_export import export

    out = export(calibrated_dir, str(tmp_path / "b3"), fmt="base3", log=lambda *a: None)
    with open(f"{out}/bitembed_config.json") as f:
        meta = json.load(f)
    with open(f"{calibrated_dir}/bitembed_config.json") as f:
        assert meta[META_KEY] == json.load(f)[META_KEY]
    assert Encoder.from_pretrained(out).calibration.same_as(Encoder.from_pretrained(calibrated_dir).calibration)


def test_encode_calibrates_on_the_corpus_and_codes_its_queries_alike(plain_dir, texts_file, tmp_path):
    docs, queries = tmp_path / "docs.npz", tmp_path / "queries.npz"
    assert main(["encode", "--model", plain_dir, "--input", texts_file, "--out", str(docs), "--precision", "int2",
                 "--calibrate-on-input", "--calibration-method", "range", "--batch-size", "4"]) == 0
    (tmp_path / "q.txt").write_text("alpha delta\nwords about topic 5\n")
    assert main(["encode", "--model", plain_dir, "--input", str(tmp_path / "q.txt"), "--out", str(queries),
                 "--precision", "int2", "--calibration-from", str(docs)]) == 0
    d, q = StoredEmbeddings.load(str(docs)), StoredEmbeddings.load(str(queries))
    floats = Encoder.from_pretrained(plain_dir).encode(TEXTS, batch_size=4)
    want = Calibration.fit(floats, "range")
    assert d.calibration.same_as(want) and q.calibration.same_as(want) and d.scale.ndim == 0
    np.testing.assert_array_equal(d.codes, encode_storage(floats, "int2", calibration=want).codes)
    assert similarity(q, d).shape == (2, len(TEXTS))


@pytest.mark.parametrize("flags, named", [
    (["--precision", "fp32", "--calibrate-on-input"], "--calibrate-on-input: fp32 vectors are stored as they are"),
    (["--precision", "int8", "--calibration-method", "range"], "--calibration-method goes with --calibrate-on-input"),
    (["--precision", "int8", "--calibration-from", "{tmp}/plain.npz"], "the archive holds no calibration"),
])
def test_encode_calibration_errors_are_one_line(plain_dir, texts_file, tmp_path, capsys, flags, named):
    encode_storage(np.eye(4, dtype=np.float32), "int8").save(str(tmp_path / "plain.npz"))
    out = tmp_path / ("v.npy" if "fp32" in flags else "v.npz")
    argv = ["encode", "--model", plain_dir, "--input", texts_file, "--out", str(out),
            *[f.format(tmp=tmp_path) for f in flags]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and named in err and err.count("\n") == 1 and not out.exists()


@pytest.mark.parametrize("case", ["limit", "scales", "missing"])
def test_calibrate_refuses_bad_input_before_loading_the_model(plain_dir, texts_file, tmp_path, capsys, monkeypatch,
                                                              case):
    monkeypatch.setattr(Encoder, "from_pretrained", lambda *a, **k: pytest.fail("the model was loaded"))
    folder = tmp_path / "m"
    shutil.copytree(plain_dir, folder)
    meta = json.loads((folder / "bitembed_config.json").read_text())
    (folder / "bitembed_config.json").write_text(json.dumps({**meta, "embedding_scales": {"int8": 0.01}}))
    argv = {"limit": ["--model", plain_dir, "--limit", "1"], "scales": ["--model", str(folder)],
            "missing": ["--model", str(tmp_path / "nope")]}[case]
    assert main(["calibrate", "--input", texts_file, *argv]) == 2
    named = {"limit": "--limit 1: calibration needs at least 2 texts", "scales": "has embedding_scales",
             "missing": "not a bitembed-jax model folder"}[case]
    assert named in capsys.readouterr().err


def test_eval_compares_calibrations_and_names_models_by_folder(plain_dir, calibrated_dir, tmp_path):
    beir = write_beir(tmp_path / "beir")
    out = tmp_path / "out"
    run_cli(["--model", calibrated_dir, "--teacher", plain_dir, "--retrieval", str(beir), "--precision",
             "fp32,int4,binary", "--calibration", "none,model,corpus", "--batch-size", "4", "--output", str(out)])
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [(r["model"], r["role"], r["precision"], r["calibration"]) for r in rows] == [
        ("run1", "model", "fp32", "none"), ("run1", "model", "int4", "none"), ("run1", "model", "binary", "none"),
        ("run1", "model", "int4", "model"), ("run1", "model", "binary", "model"),
        ("run1", "model", "int4", "corpus"), ("run1", "model", "binary", "corpus"),
        ("teacher", "teacher", "fp32", "none")]
    from bitembed_jax.eval import local

    enc = Encoder.from_pretrained(calibrated_dir)
    data = local.read_beir(str(beir))
    docs = local.embed_texts(enc, data.corpus_texts, batch_size=4)
    queries = local.embed_texts(enc, data.query_texts, batch_size=4)
    cals = {"none": None, "model": enc.calibration, "corpus": Calibration.fit(docs, "standardize")}
    for r in rows[1:-1]:
        cal = cals[r["calibration"]]
        want = local.retrieval_scores(encode_storage(queries, r["precision"], calibration=cal),
                                      encode_storage(docs, r["precision"], calibration=cal), data.query_ids,
                                      data.corpus_ids, data.qrels)
        assert r["ndcg_at_10"] == pytest.approx(want["ndcg_at_10"], abs=1e-6)
    summary = (out / "summary.md").read_text()
    assert "| run1 | beir | ndcg_at_10 | int4 | corpus |" in summary and "student" not in summary

    run_cli(["--model", plain_dir, "--retrieval", str(beir), "--batch-size", "4", "--output", str(tmp_path / "o2")])
    rows = json.loads((tmp_path / "o2" / "results.json").read_text())["rows"]
    assert [(r["model"], r["role"]) for r in rows] == [("bitnet", "model")]  # a folder without statistics
    assert "calibration |" not in (tmp_path / "o2" / "summary.md").read_text()


def test_shards_of_one_corpus_keep_their_calibration_and_refuse_mixed_ones(tmp_path):
    from bitembed_jax.io.embeddings import load_embeddings, save_vectors, write_manifest

    x = np.random.default_rng(0).normal(size=(6, 8)).astype(np.float32)
    cal = Calibration.fit(x, "standardize")
    for i, part in enumerate((x[:4], x[4:])):
        save_vectors(str(tmp_path / f"s{i}.npz"), encode_storage(part, "int4", calibration=cal))
    write_manifest(str(tmp_path / "m.json"), [{"file": "s0.npz", "rows": 4}, {"file": "s1.npz", "rows": 2}], "int4", 8)
    whole = load_embeddings(str(tmp_path / "m.json"))
    assert whole.calibration.same_as(cal)
    np.testing.assert_array_equal(whole.codes, encode_storage(x, "int4", calibration=cal).codes)
    save_vectors(str(tmp_path / "s1.npz"), encode_storage(x[4:], "int4", calibration=Calibration.fit(x[:3])))
    with pytest.raises(ValueError, match="shards were coded with different calibrations"):
        load_embeddings(str(tmp_path / "m.json"))


def test_calibrate_on_input_is_refused_across_processes():
    from types import SimpleNamespace

    from bitembed_jax.cli_encode import encode_calibration

    args = SimpleNamespace(calibrate_on_input=True, no_calibration=False, calibration_from=None,
                           calibration_method=None, precision="int8")
    assert encode_calibration(args, 1) == "input"
    with pytest.raises(ValueError, match="every shard must be coded with one calibration"):
        encode_calibration(args, 4)
