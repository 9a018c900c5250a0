"""bench/sts_splits.py: Spearman and paired bootstrap against scipy, scores against the eval path, the cache."""
import importlib.util
import json
import os

import numpy as np
import pytest
from scipy.stats import spearmanr

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("sts_splits", os.path.join(ROOT, "bench", "sts_splits.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_resamples_are_shared_and_fixed_by_seed_and_split_name(bench):
    gold = np.random.default_rng(0).normal(size=30)
    a, b = bench.Resampled(gold, 40, 5, "stsb-dev"), bench.Resampled(gold, 40, 5, "stsb-dev")
    np.testing.assert_array_equal(a.idx, b.idx)
    np.testing.assert_array_equal(a.idx[0], np.arange(30))  # row 0: the split itself
    assert a.idx.shape == (41, 30) and not np.array_equal(a.idx, bench.Resampled(gold, 40, 5, "other").idx)
    assert not np.array_equal(a.idx, bench.Resampled(gold, 40, 6, "stsb-dev").idx)


def test_resampled_spearman_is_scipy_on_each_resample(bench):
    rng = np.random.default_rng(4)
    gold = rng.normal(size=45).round(1)  # ties
    sims = rng.integers(0, 8, size=45).astype(float)
    boot = bench.Resampled(gold, 30, 0, "x")
    want = [spearmanr(sims[i], gold[i]).statistic for i in boot.idx]
    np.testing.assert_allclose(boot.spearman(sims), want, rtol=1e-12)


def test_ratio_is_scipy_on_the_shared_resamples(bench):
    rng = np.random.default_rng(1)
    gold = rng.normal(size=60)
    teacher, student = gold + rng.normal(size=60), gold + 1.5 * rng.normal(size=60)
    boot = bench.Resampled(gold, 300, 7, "x")
    out = bench.ratio_stats(boot.spearman(student), boot.spearman(teacher), 0.9)
    ratio = [spearmanr(student[i], gold[i]).statistic / spearmanr(teacher[i], gold[i]).statistic
             for i in boot.idx[1:]]
    assert out["ratio"] == pytest.approx(spearmanr(student, gold).statistic / spearmanr(teacher, gold).statistic)
    assert (out["low"], out["high"]) == pytest.approx(tuple(np.percentile(ratio, [2.5, 97.5])))
    assert out["p_target"] == pytest.approx(np.mean(np.asarray(ratio) >= 0.9)) and out["resamples"] == 300
    same = bench.ratio_stats(boot.spearman(teacher), boot.spearman(teacher), 0.95)
    assert same["ratio"] == same["low"] == same["high"] == 1.0 and same["p_target"] == 1.0


def test_difference_is_scipy_on_the_shared_resamples(bench):
    rng = np.random.default_rng(2)
    gold = rng.normal(size=50)
    a, b, t = (gold + k * rng.normal(size=50) for k in (1.0, 1.6, 0.8))
    boot = bench.Resampled(gold, 200, 3, "x")
    out = bench.difference_stats(*(boot.spearman(s) for s in (a, b, t)))
    rho = lambda s, i: spearmanr(s[i], gold[i]).statistic  # noqa: E731
    diff = np.asarray([(rho(a, i) - rho(b, i)) / rho(t, i) for i in boot.idx[1:]])
    whole = np.arange(50)
    assert out["diff"] == pytest.approx((rho(a, whole) - rho(b, whole)) / rho(t, whole))
    assert (out["low"], out["high"]) == pytest.approx(tuple(np.percentile(diff, [2.5, 97.5])))
    assert out["p_ahead"] == pytest.approx(np.mean(diff > 0)) and out["resamples"] == 200


ROWS = [(4.5, "alpha beta gamma", "alpha beta delta"), (1.0, "sentence number 3", "words words"),
        (3.2, "topic 5 with words", "topic 5 about words"), (0.5, "delta", "gamma sentence"),
        (2.5, "alpha beta gamma", "words words"), (3.9, "a cat sleeps", "a cat is asleep"),
        (0.2, "delta", "a cat sleeps"), (2.0, "rain today", "topic 5 with words")]


@pytest.fixture(scope="module")
def setup(tiny_qwen3, tmp_path_factory):
    from bitembed_jax.convert.hf_import import convert

    root = tmp_path_factory.mktemp("sts_splits")
    tsv = root / "pairs.tsv"
    tsv.write_text("score\ts1\ts2\n" + "".join(f"{s}\t{a}\t{b}\n" for s, a, b in ROWS))
    return (convert(tiny_qwen3, str(root / "student"), mode="bitnet"), convert(tiny_qwen3, str(root / "teacher")),
            str(tsv))


def test_scores_match_the_eval_path_and_reruns_use_the_cache(bench, setup, tmp_path, monkeypatch, capsys):
    from bitembed_jax.encode import Encoder
    from bitembed_jax.eval.local import evaluate_sts, read_sts

    student, teacher, tsv = setup
    wd = tmp_path / "wd"
    argv = ["--workdir", str(wd), "--teacher", teacher, "--model", f"s={student}", "--split", f"all={tsv}",
            "--split", f"tail={tsv}@3:", "--bootstrap", "20", "--model", f"s2={student}", "--compare", "s:s2"]
    bench.main(argv)
    res = json.loads((wd / "results.json").read_text())
    assert res["pairs"] == {"all": 8, "tail": 5}
    data = read_sts(tsv)
    for name, folder in (("s", student), ("teacher", teacher)):
        rows = evaluate_sts(Encoder.from_pretrained(folder, max_length=128), data, bench.PRECISIONS, batch_size=4)
        for r in rows:  # each sentence encoded once here vs once per occurrence there: the same vectors
            assert res["scores"]["all"][name][r["precision"]]["student"] == pytest.approx(r["score"], abs=1e-6)
    tail = res["scores"]["tail"]["s"]["fp32"]
    sims = [np.dot(*(Encoder.from_pretrained(f, max_length=128).encode([a, b]))) for f in (student, teacher)
            for _, a, b in ROWS[3:]]
    gold = [s for s, _, _ in ROWS[3:]]
    assert tail["ratio"] == pytest.approx(spearmanr(sims[:5], gold).statistic / spearmanr(sims[5:], gold).statistic,
                                          abs=1e-6)
    same = res["compare"]["all"]["s:s2"]["fp32"]  # one model under two names: never ahead of itself
    assert (same["diff"], same["low"], same["high"], same["p_ahead"]) == (0.0, 0.0, 0.0, 0.0)
    assert "| s - s2 | +0.0 [+0.0, +0.0]" in (wd / "report.md").read_text()
    assert "| s | " in (wd / "report.md").read_text() and "**tail** (5 pairs" in capsys.readouterr().out

    encoded = []

    def counting(encoder, texts, *, batch_size, prompt=""):
        encoded.extend(texts)
        return np.zeros((len(texts), encoder.cfg.hidden_size), np.float32) + 1.0

    monkeypatch.setattr("bitembed_jax.eval.local.embed_texts", counting)
    (wd / "emb" / "s" / "000001.npz.tmp").write_bytes(b"left by a kill mid-write")
    bench.main(argv)
    assert encoded == [] and json.loads((wd / "results.json").read_text()) == res
    extra = tmp_path / "extra.tsv"
    extra.write_text("score\ts1\ts2\n1.0\tdelta\tnew words here\n2.0\tall new\train today\n")
    bench.main([*argv, "--split", f"extra={extra}"])
    assert sorted(encoded) == sorted(["all new", "new words here"] * 3)  # only the new ones, once per model


def test_a_name_keeps_its_model_contents(bench, setup, tmp_path):
    import shutil

    student, teacher, tsv = setup
    wd = tmp_path / "wd"
    run = lambda folder: bench.main(["--workdir", str(wd), "--teacher", teacher, "--model", f"s={folder}",  # noqa: E731
                                     "--split", f"a={tsv}", "--bootstrap", "5"])
    run(student)
    with pytest.raises(SystemExit, match="models.json: s: .* then, .* now"):
        run(teacher)
    moved = shutil.copytree(student, tmp_path / "moved")  # the same model elsewhere keeps its cache
    run(moved)
    with open(moved / "bitembed_config.json", "a") as f:  # retrained in place: other contents, same folder
        f.write(" ")
    with pytest.raises(SystemExit, match="models.json: s: .* then, .* now"):
        run(moved)
    assert sorted(os.listdir(wd / "emb" / "s")) == ["000000.npz"]


@pytest.mark.parametrize("flags, named", [
    (["--split", "nameless"], "expected NAME=VALUE"),
    (["--split", "a=/no/such.tsv"], "/no/such.tsv not found"),
    (["--split", "a={tsv}@x:"], "rows must be START:STOP"),
    (["--model", "teacher={student}"], "not 'teacher'"),
    (["--model", "s=/no/model"], "model s: /no/model is not a model folder"),
    (["--model", "s={student}", "--compare", "s:x"], "--compare 's:x': expected A:B"),
])
def test_bad_input_stops_before_the_workdir_is_made(bench, setup, tmp_path, flags, named):
    student, teacher, tsv = setup
    flags = [f.format(tsv=tsv, student=student) for f in flags]
    with pytest.raises(SystemExit, match=named):
        bench.main(["--workdir", str(tmp_path / "wd"), "--teacher", teacher, *flags])
    assert not (tmp_path / "wd").exists()
