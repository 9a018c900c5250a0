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
                     "sts.tsv": [("2.0", "Shared one.", "A test only sentence."), ("0.5", "Test pair two.", "Rain?")]},
            "sickr": {"sts-train.tsv": [("4.0", "A man plays.", "Shared two."), ("4.5", " A man plays. ", "Dogs run.")],
                      "sts.tsv": [("3.5", "Shared two.", "Another test sentence."), ("1.5", "Snow.", "Sun.")]}}
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


@pytest.mark.parametrize("flags, named", [(["--distill-text", "stsb,msmarco"], "msmarco"),
                                          (["--teacher", "no/such/teacher"], "--teacher no/such/teacher"),
                                          (["--student-init", "no/such/model"], "--student-init no/such/model"),
                                          (["--gguf", "no/such.gguf"], "--gguf no/such.gguf")])
def test_bad_options_stop_before_the_workdir_is_made(bench, tmp_path, capsys, flags, named):
    wd = tmp_path / "run"
    with pytest.raises(SystemExit):
        bench.main(["--workdir", str(wd), *flags])
    assert named in capsys.readouterr().err
    assert not wd.exists()


def test_a_workdir_refuses_other_options(bench, tmp_path):
    wd = str(tmp_path)
    bench.check_workdir_args(bench.parse_args(["--workdir", wd, "--finetune-steps", "300"]), wd)
    bench.check_workdir_args(bench.parse_args(["--workdir", wd, "--finetune-steps", "300", "--no-ablation"]), wd)
    changed = bench.parse_args(["--workdir", wd, "--finetune-steps", "300", "--distill-text", "stsb"])
    with pytest.raises(SystemExit, match=r"--distill-text: '' then, 'stsb' now"):
        bench.check_workdir_args(changed, wd)
