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
    pairs = [{"query": "q1", "positive": "p1"}, {"query": "q2", "positive": "p2"}]
    args = bench.parse_args(["--workdir", str(tmp_path), "--distill-text", "stsb,sickr"])
    rows = _rows(bench.distill_file(args, str(tmp_path), [json.dumps(r) for r in pairs]))
    extra = sorted(r["query"] for r in rows if r not in pairs)
    assert all(r["query"] == r["positive"] for r in rows if r not in pairs)
    assert extra == sorted(["A cat sleeps.", "A cat is asleep.", "Rain.", "A man plays.", "Dogs run."])
    assert all(r in rows for r in pairs) and len(rows) == len(pairs) + len(extra)


def test_distill_text_one_set_and_bad_name(bench, tmp_path):
    args = bench.parse_args(["--workdir", str(tmp_path), "--distill-text", "sickr"])
    rows = _rows(bench.distill_file(args, str(tmp_path), [json.dumps({"query": "q", "positive": "p"})]))
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


def test_a_workdir_from_before_an_added_option_resumes_at_its_default(bench, tmp_path):
    """args.json written before --ablation-init existed: the default (None) matches it, a folder does not."""
    wd = str(tmp_path)
    bench.check_workdir_args(bench.parse_args(["--workdir", wd, "--pretrain-steps", "0"]), wd)
    path = tmp_path / "args.json"
    recorded = json.loads(path.read_text())
    del recorded["ablation_init"]
    path.write_text(json.dumps(recorded))
    bench.check_workdir_args(bench.parse_args(["--workdir", wd, "--pretrain-steps", "0", "--no-student"]), wd)
    model = tmp_path / "ablation_model"
    model.mkdir()
    (model / "bitembed_config.json").write_text("{}")
    with pytest.raises(SystemExit, match=r"--ablation-init: None then, '.*ablation_model' now"):
        bench.check_workdir_args(bench.parse_args(["--workdir", wd, "--pretrain-steps", "0",
                                                   "--ablation-init", str(model)]), wd)


@pytest.mark.parametrize("flags", [["--ablation-init", "no/such/model", "--pretrain-steps", "0"],
                                   ["--ablation-init", "MODEL"],
                                   ["--ablation-init", "MODEL", "--pretrain-steps", "0", "--no-ablation"]])
def test_bad_ablation_init_stops_before_the_workdir_is_made(bench, tmp_path, capsys, flags):
    model = tmp_path / "model"
    model.mkdir()
    (model / "bitembed_config.json").write_text("{}")
    wd = tmp_path / "run"
    with pytest.raises(SystemExit):
        bench.main(["--workdir", str(wd), *[str(model) if f == "MODEL" else f for f in flags]])
    assert "--ablation-init" in capsys.readouterr().err
    assert not wd.exists()


def test_ablation_line_continues_from_its_own_start(bench, tmp_path, monkeypatch):
    """--ablation-init with --no-student: only the ablation trains, from the earlier ablation, on the same data,
    steps, learning rate and seed as the student's stage, and with no teacher term."""
    folders = {}
    for name in ("teacher", "student", "ablation"):
        folders[name] = tmp_path / name
        folders[name].mkdir()
        (folders[name] / "bitembed_config.json").write_text("{}")
    calls = []
    monkeypatch.setattr(bench, "split", lambda args, wd: (str(tmp_path / "train.jsonl"), {}))
    (tmp_path / "train.jsonl").write_text("{}\n")
    monkeypatch.setattr(bench, "run_train", lambda cfg, overrides, wd, log: calls.append((cfg, overrides, wd)) or wd)
    monkeypatch.setattr(bench, "evaluate", lambda *a: {"rows": []})
    monkeypatch.setattr(bench, "report", lambda results, *a: " ".join(sorted(results)))
    wd = tmp_path / "run"
    flags = ["--teacher", str(folders["teacher"]), "--student-init", str(folders["student"]), "--pretrain-steps", "0",
             "--finetune-steps", "30", "--finetune-lr", "5e-5", "--seed", "2"]
    bench.main(["--workdir", str(wd), *flags, "--ablation-init", str(folders["ablation"]), "--no-student"])
    assert [(c[0], os.path.basename(c[2])) for c in calls] == [("gemma3_270m_cpu_finetune.py", "ablation")]
    overrides = calls[0][1]
    assert f"--config.init.model={folders['ablation']}" in overrides
    assert not any(o.startswith("--config.init.model=") and str(folders["student"]) in o for o in overrides)
    assert {"--config.distill.sim_weight=0", "--config.distill.attn_weight=0", "--config.train.num_steps=30",
            "--config.train.learning_rate=5e-05", "--config.data.seed=2"} <= set(overrides)
    assert not any(o.startswith("--config.teacher.") for o in overrides)

    calls.clear()
    bench.main(["--workdir", str(tmp_path / "run2"), *flags, "--no-ablation"])
    assert [os.path.basename(c[2]) for c in calls] == ["student"]
    assert f"--config.init.model={folders['student']}" in calls[0][1]
    shared = [o for o in calls[0][1] if not o.startswith(("--config.init.", "--config.teacher.", "--config.distill."))]
    assert shared == [o for o in overrides if not o.startswith(("--config.init.", "--config.distill."))]


@pytest.mark.parametrize("flags, says, not_says", [
    (["--no-student"], "no distilled fine-tune in this run (--no-student)", "similarity + attention"),
    (["--embed-weight", "1"], "distillation: similarity + attention relation + 1 x pooled-vector alignment",
     "--no-student"),
])
def test_report_header_names_only_the_fine_tunes_that_ran(bench, flags, says, not_says):
    args = bench.parse_args(["--workdir", "unused", "--pretrain-steps", "0", *flags])
    rows = [{"dataset": ds, "precision": p, "score": 0.5, "bytes_per_vector": 4}
            for ds in ("heldout", "stsb", "sickr") for p in bench.PRECISIONS]
    text = bench.report({"teacher": {"rows": rows}, "ablation": {"rows": rows}}, {"eval teacher": 60.0}, args, 10,
                        {"queries": ["q"], "corpus": ["d"]})
    header = text.splitlines()[0]
    assert says in header and not_says not in header
    assert "| ablation / teacher | 100.0% | 100.0% | 100.0% | 100.0% |" in text


def test_eval_model_adds_a_row_to_a_finished_workdir_without_training(bench, tmp_path, monkeypatch):
    folders = {}
    for name in ("teacher", "start", "soup", "other"):
        folders[name] = tmp_path / name
        folders[name].mkdir()
        (folders[name] / "bitembed_config.json").write_text("{}")
    monkeypatch.setattr(bench, "split", lambda args, wd: (str(tmp_path / "train.jsonl"), {"queries": ["q"],
                                                                                          "corpus": ["d"]}))
    (tmp_path / "train.jsonl").write_text("{}\n")
    monkeypatch.setattr(bench, "run_train", lambda *a: pytest.fail("nothing should train"))
    scored = []

    def fake_eval(model_dir, held, args, cache):
        scored.append(model_dir)
        score = 0.4 if model_dir.endswith("soup") else 0.5
        rows = [{"dataset": ds, "precision": p, "score": score, "bytes_per_vector": 4}
                for ds in ("heldout", "stsb", "sickr") for p in bench.PRECISIONS]
        return {"rows": rows, "model": model_dir}

    monkeypatch.setattr(bench, "evaluate", fake_eval)
    wd = tmp_path / "run"
    base = ["--workdir", str(wd), "--teacher", str(folders["teacher"]), "--student-init", str(folders["start"]),
            "--pretrain-steps", "0", "--no-student", "--no-ablation"]
    bench.main(base)
    bench.main([*base, "--eval-model", f"soup={folders['soup']}"])  # the recorded options still match
    assert scored[-1] == str(folders["soup"])
    report = (wd / "report.md").read_text()
    assert "| soup / teacher | 80.0% | 80.0% | 80.0% | 80.0% |" in report and f"soup = {folders['soup']}" in report


@pytest.mark.parametrize("item, named", [("student=DIR", "NAME must be new"), ("a b=DIR", "NAME must be new"),
                                         ("x=/no/such", "not a bitembed-jax model folder")])
def test_bad_eval_model_stops_before_the_workdir_is_made(bench, tmp_path, capsys, item, named):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "bitembed_config.json").write_text("{}")
    with pytest.raises(SystemExit):
        bench.main(["--workdir", str(tmp_path / "run"), "--eval-model", item.replace("DIR", str(tmp_path / "m"))])
    assert named in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_an_eval_cache_is_never_reused_for_another_model(bench, tmp_path):
    import shutil

    a, b = tmp_path / "a", tmp_path / "b"
    for d, text in ((a, "model a"), (b, "model b")):
        d.mkdir()
        (d / "bitembed_config.json").write_text(text)
    cache = tmp_path / "eval_soup.json"
    cache.write_text(json.dumps({"rows": [], "model": str(a)}))  # written before contents were recorded: by path
    assert bench.evaluate(str(a), {}, None, str(cache)) == {"rows": [], "model": str(a)}
    with pytest.raises(SystemExit, match=f"holds the figures of {a} with other contents than {b}"):
        bench.evaluate(str(b), {}, None, str(cache))
    from bitembed_jax.io.model_dir import fingerprint

    cache.write_text(json.dumps({"rows": [], "model": str(a), "fingerprint": fingerprint(str(a))}))
    moved = shutil.copytree(a, tmp_path / "moved")  # the same model elsewhere: its figures stand
    assert bench.evaluate(str(moved), {}, None, str(cache))["rows"] == []
    (a / "bitembed_config.json").write_text("model a, retrained in place")
    with pytest.raises(SystemExit, match=f"holds the figures of {a} with other contents than {a} has now"):
        bench.evaluate(str(a), {}, None, str(cache))


def _beir(root, name):
    from tests.test_eval import write_beir

    return str(write_beir(root / name))


@pytest.mark.parametrize("make, named", [(lambda t: str(t), "not a BEIR folder (missing corpus.jsonl"),
                                         (lambda t: [_beir(t / "a", "cisi"), _beir(t / "b", "cisi")],
                                          "two folders named 'cisi'")])
def test_bad_ood_folders_stop_before_the_workdir_is_made(bench, tmp_path, capsys, make, named):
    folders = make(tmp_path)
    flags = [x for d in (folders if isinstance(folders, list) else [folders]) for x in ("--ood", d)]
    with pytest.raises(SystemExit):
        bench.main(["--workdir", str(tmp_path / "run"), *flags])
    assert named in capsys.readouterr().err and not (tmp_path / "run").exists()


def _ood_rows(score):
    from bitembed_jax.choices import PRECISIONS

    return [{"precision": p, "ndcg_at_10": score, "recall_at_100": 2 * score} for p in PRECISIONS]


def test_every_stage_is_scored_out_of_domain_and_the_report_leads_with_it(bench, tmp_path, monkeypatch):
    folders = {}
    for name in ("teacher", "start"):
        folders[name] = tmp_path / name
        folders[name].mkdir()
        (folders[name] / "bitembed_config.json").write_text("{}")
    ood = [_beir(tmp_path, "cisi"), _beir(tmp_path, "other")]
    monkeypatch.setattr(bench, "split", lambda args, wd: (str(tmp_path / "train.jsonl"), {"queries": ["q"],
                                                                                          "corpus": ["d"]}))
    (tmp_path / "train.jsonl").write_text("{}\n")
    monkeypatch.setattr(bench, "run_train", lambda cfg, overrides, wd, log: wd)
    monkeypatch.setattr(bench, "evaluate", lambda *a: {"rows": [
        {"dataset": ds, "precision": p, "score": 0.5, "bytes_per_vector": 4}
        for ds in ("heldout", "stsb", "sickr") for p in bench.PRECISIONS]})
    scored = []

    def fake_ood(model_dir, folder, max_length, cache):
        scored.append((os.path.basename(model_dir), os.path.basename(folder), max_length))
        return {"rows": _ood_rows(0.2 if model_dir.endswith("teacher") else 0.1)}

    monkeypatch.setattr(bench, "evaluate_ood", fake_ood)
    wd = tmp_path / "run"
    bench.main(["--workdir", str(wd), "--teacher", str(folders["teacher"]), "--student-init", str(folders["start"]),
                "--pretrain-steps", "0", *[x for d in ood for x in ("--ood", d)]])
    assert scored == [(m, ds, 128) for m in ("teacher", "student", "ablation") for ds in ("cisi", "other")]
    report = (wd / "report.md").read_text()
    lead = report.split("\n\n")[1]  # the first section after the header line
    assert lead.startswith("**Out of domain: share of the teacher's score**")
    assert "| cisi | nDCG@10 | student / teacher | 50.0% | 50.0% | 50.0% | 50.0% | 50.0% |" in report
    assert "| other | Recall@100 | ablation / teacher | 50.0% |" in report
    assert report.index("Out of domain") < report.index("retrieval nDCG@10")


def test_evaluate_ood_scores_every_precision_once_per_model(bench, tiny_qwen3, tmp_path, monkeypatch):
    from bitembed_jax.choices import PRECISIONS
    from bitembed_jax.convert.hf_import import convert
    from bitembed_jax.encode import Encoder

    model = convert(tiny_qwen3, str(tmp_path / "m"), mode="bitnet")
    cache = str(tmp_path / "eval_m_ood_beir.json")
    beir = _beir(tmp_path, "beir")
    out = bench.evaluate_ood(model, beir, 32, cache)
    assert [r["precision"] for r in out["rows"]] == list(PRECISIONS)
    assert all(0 <= r["ndcg_at_10"] <= 1 and 0 <= r["recall_at_100"] <= 1 for r in out["rows"])
    monkeypatch.setattr(Encoder, "from_pretrained", lambda *a, **k: pytest.fail("a cached evaluation is reused"))
    assert bench.evaluate_ood(model, beir, 32, cache)["rows"] == out["rows"]
