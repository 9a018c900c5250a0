"""bench/quality_gemma3_270m.py's --distill-text data: unlabeled train-split sentences join the fine-tune data,
and no sentence of any test split does (SICK repeats most test sentences in its train split)."""
import importlib.util
import json
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


@pytest.fixture()
def bench(tmp_path, monkeypatch):
    path = os.path.join(ROOT, "bench", "quality_gemma3_270m.py")
    spec = importlib.util.spec_from_file_location("quality_bench", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    shared = tmp_path / "shared"
    sets = {"stsb": {"sts-train.tsv": [("3.0", "A cat sleeps.", "A cat is asleep."), ("1.0", "Shared one.", "Rain.")],
                     "sts.tsv": [("2.0", "Shared one.", "A test only sentence.")]},
            "sickr": {"sts-train.tsv": [("4.0", "A man plays.", "Shared two."), ("4.5", " A man plays. ", "Dogs run.")],
                      "sts.tsv": [("3.5", "Shared two.", "Another test sentence.")]}}
    for name, files in sets.items():
        (shared / name).mkdir(parents=True)
        for fname, rows in files.items():
            (shared / name / fname).write_text("score\ts1\ts2\n" + "".join("\t".join(r) + "\n" for r in rows))
    monkeypatch.setattr(mod, "SHARED", str(shared))
    return mod


def _rows(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_distill_text_adds_train_sentences_without_test_ones(bench, tmp_path):
    train = tmp_path / "train.jsonl"
    pairs = [{"query": "q1", "positive": "p1"}, {"query": "q2", "positive": "p2"}]
    train.write_text("".join(json.dumps(r) + "\n" for r in pairs))
    args = bench.parse_args(["--workdir", str(tmp_path), "--distill-text", "stsb,sickr"])
    rows = _rows(bench.distill_file(args, str(tmp_path), str(train)))
    extra = sorted(r["query"] for r in rows if r not in pairs)
    assert all(r["query"] == r["positive"] for r in rows if r not in pairs)
    assert extra == sorted(["A cat sleeps.", "A cat is asleep.", "Rain.", "A man plays.", "Dogs run."])
    assert all(r in rows for r in pairs) and len(rows) == len(pairs) + len(extra)


def test_distill_text_one_set_and_bad_name(bench, tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"query": "q", "positive": "p"}) + "\n")
    args = bench.parse_args(["--workdir", str(tmp_path), "--distill-text", "sickr"])
    rows = _rows(bench.distill_file(args, str(tmp_path), str(train)))
    assert sorted(r["query"] for r in rows) == ["A man plays.", "Dogs run.", "q"]
    bad = bench.parse_args(["--workdir", str(tmp_path / "other"), "--distill-text", "stsb,msmarco"])
    with pytest.raises(SystemExit, match="msmarco"):
        bench.distill_file(bad, str(tmp_path / "other"), str(train))
