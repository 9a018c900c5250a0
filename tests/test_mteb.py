"""mteb 2.x runs our wrapper fully offline on tasks defined here with in-memory data; its scores
match hand computation and the local evaluator on the same vectors. No socket may connect."""
import argparse
import math
import socket
from types import SimpleNamespace

import numpy as np
import pytest
from datasets import Dataset, DatasetDict
from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
from mteb.abstasks.sts import AbsTaskSTS
from mteb.abstasks.task_metadata import TaskMetadata
from mteb.types import PromptType

from bitembed_jax.eval import local
from bitembed_jax.eval.cli_eval import add_eval_parser, model_name
from bitembed_jax.eval.mteb_wrapper import MEAN, MTEBEncoder, evaluate_mteb
from bitembed_jax.quant.storage import encode_storage

RETRIEVAL_PROMPT = "Find the document about the topic."
TEMPLATE = "Instruct: {}\nQuery: "


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("test tried to open a network connection")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _metadata(name, kind, main_score, description, prompt=None):
    return TaskMetadata(
        name=name, type=kind, main_score=main_score, description=description, prompt=prompt,
        reference="https://github.com/embeddings-benchmark/mteb", dataset={"path": "NA", "revision": "NA"},
        category="t2t", eval_splits=["test"], eval_langs=["eng-Latn"], date=("2024-01-01", "2024-01-01"),
        dialect=["Written"], domains=[], task_subtypes=[], license="cc-by-4.0", annotations_creators="derived",
        modalities=["text"], sample_creation="found", bibtex_citation="")


def unit(deg):
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


# 2-d unit vectors: from 0 deg the ranking is near > mid > far
DOCS = {"near": ("the near document", unit(0)), "mid": ("the middle document", unit(60)),
        "far": ("the far document", unit(180))}
QUERIES = {"qa": ("query a", unit(0)), "qb": ("query b", unit(0))}
QRELS = {"qa": {"mid": 1}, "qb": {"near": 1, "far": 2}}


class TinyRetrieval(AbsTaskRetrieval):
    metadata = _metadata("TinyRetrieval", "Retrieval", "ndcg_at_10", "Tiny test corpus.", {"query": RETRIEVAL_PROMPT})

    def load_data(self, num_proc=None, **kwargs):
        split = RetrievalSplitData(
            queries=Dataset.from_list([{"id": k, "text": t} for k, (t, _) in QUERIES.items()]),
            corpus=Dataset.from_list([{"id": k, "text": t} for k, (t, _) in DOCS.items()]),
            relevant_docs=QRELS, top_ranked=None)
        self.dataset = {"default": {"test": split}}
        self.data_loaded = True


STS_PAIRS = [("s one", unit(0), "t one", unit(80), 1.0), ("s two", unit(0), "t two", unit(40), 3.0),
             ("s three", unit(0), "t three", unit(10), 2.0)]  # similarity ranks 1, 2, 3; gold ranks 1, 3, 2


class TinySTS(AbsTaskSTS):
    metadata = _metadata("TinySTS", "STS", "cosine_spearman", "Score how similar two sentences are.")
    min_score, max_score = 0, 5

    def load_data(self, num_proc=None, **kwargs):
        self.dataset = DatasetDict({"test": Dataset.from_dict({
            "sentence1": [p[0] for p in STS_PAIRS], "sentence2": [p[2] for p in STS_PAIRS],
            "score": [p[4] for p in STS_PAIRS]})})
        self.data_loaded = True


class FakeEncoder:
    """Stands in for ``Encoder``: a fixed vector per text, and a record of each call's prefix."""

    def __init__(self):
        self.vectors = {t: v for t, v in [*DOCS.values(), *QUERIES.values()]}
        self.vectors.update({p[i]: p[i + 1] for p in STS_PAIRS for i in (0, 2)})
        self.cfg, self.max_length, self.meta, self.prompts = SimpleNamespace(hidden_size=2), 512, {}, {}
        self.calibration = None  # as Encoder on a folder without per-dimension statistics
        self.calls = []

    def encode(self, texts, *, batch_size, prompt=""):
        self.calls.append((prompt, sorted(texts)))
        return np.array([self.vectors[t] for t in texts], np.float32).reshape(len(texts), 2)


def prefixes(fake):
    return {tuple(texts): prompt for prompt, texts in fake.calls}


def test_mteb_retrieval_matches_hand_and_local(tmp_path):
    fake = FakeEncoder()
    model = MTEBEncoder(fake, name="fake")
    rows = evaluate_mteb(model, [TinyRetrieval()], [("fp32", None)], str(tmp_path))
    # trec_eval nDCG (gain = relevance): qa: rel 1 at rank 2; qb: rel 1 at rank 1, rel 2 at rank 3
    want = np.mean([1 / math.log2(3), (1 + 2 / math.log2(4)) / (2 + 1 / math.log2(3))])
    assert rows[0]["dataset"] == "TinyRetrieval" and rows[0]["score"] == pytest.approx(want, abs=1e-5)
    assert rows[-1]["dataset"] == MEAN and rows[-1]["score"] == rows[0]["score"]

    ids = {k: i for i, k in enumerate(DOCS)}
    mine = local.retrieval_scores(np.array([v for _, v in QUERIES.values()]), np.array([v for _, v in DOCS.values()]),
                                  list(QUERIES), list(ids), QRELS)
    assert rows[0]["score"] == pytest.approx(mine["ndcg_at_10"], abs=1e-5)
    assert mine["mrr_at_10"] == pytest.approx(0.75)

    # queries carry the task's own instruction in the training template, documents nothing
    seen = prefixes(fake)
    assert seen[("query a", "query b")] == TEMPLATE.format(RETRIEVAL_PROMPT)
    assert seen[tuple(sorted(t for t, _ in DOCS.values()))] == ""
    assert (tmp_path / "results" / "bitembed-jax__fake" / "local" / "TinyRetrieval.json").exists()


def test_user_prompts_and_precision_experiments(tmp_path):
    fake = FakeEncoder()
    model = MTEBEncoder(fake, name="org/fake", revision="r1", prompts={"TinyRetrieval-query": "Custom."})
    rows = evaluate_mteb(model, [TinyRetrieval()], [("fp32", None), ("binary", None), ("int8", None)], str(tmp_path))
    assert prefixes(fake)[("query a", "query b")] == TEMPLATE.format("Custom.")
    # one encoding pass for all three precisions (queries + corpus), the rest re-quantized from the cache
    assert len(fake.calls) == 2 and model._cache == {}  # cleared after the task
    assert [(r["precision"], r["bytes_per_vector"]) for r in rows[:3]] == [("fp32", 8), ("binary", 1), ("int8", 6)]
    run = tmp_path / "results" / "org__fake" / "r1"
    assert (run / "TinyRetrieval.json").exists()
    assert (run / "experiments" / "precision_binary" / "TinyRetrieval.json").exists()
    assert (run / "experiments" / "precision_int8" / "TinyRetrieval.json").exists()


def test_mteb_sts_matches_hand_and_local(tmp_path):
    fake = FakeEncoder()
    rows = evaluate_mteb(MTEBEncoder(fake, name="fake"), [TinySTS()], [("fp32", None)], str(tmp_path))
    assert rows[0]["score"] == pytest.approx(0.5)  # rho = 1 - 6 * (0 + 1 + 1) / (3 * (9 - 1))
    a, b = np.array([p[1] for p in STS_PAIRS]), np.array([p[3] for p in STS_PAIRS])
    assert local.sts_spearman(a, b, [p[4] for p in STS_PAIRS]) == pytest.approx(rows[0]["score"])
    # symmetric task without its own prompt: both sides get mteb's STS instruction (no prompt type given)
    assert {p for p, _ in fake.calls} == {TEMPLATE.format("Retrieve semantically similar text.")}


@pytest.mark.filterwarnings("ignore:No prompt found")  # mteb's notice that the type has no default
def test_instruction_falls_back_to_the_description():
    """A task whose type has no mteb default (here: not a registered task class at all)."""
    model = MTEBEncoder(FakeEncoder(), name="fake")
    meta = _metadata("Unregistered", "Retrieval", "ndcg_at_10", "Match questions to answers.")
    assert model.prefix(meta, PromptType.query) == TEMPLATE.format("Match questions to answers.")
    assert model.prefix(meta, PromptType.document) == ""
    assert MTEBEncoder(FakeEncoder(), name="fake", prompts={"Retrieval": ""}).prefix(meta, PromptType.query) == ""


@pytest.fixture(scope="module")
def model_dir(tiny_qwen3, tmp_path_factory):
    from bitembed_jax.convert.hf_import import convert

    return convert(tiny_qwen3, str(tmp_path_factory.mktemp("mteb_model") / "m"), mode="bitnet")


def test_real_model_every_precision_through_mteb(model_dir, tmp_path):
    model = MTEBEncoder.from_pretrained(model_dir, batch_size=4)
    settings = [("fp32", None), ("int8", None), ("int4", 32), ("int2", None), ("binary", 16)]
    rows = evaluate_mteb(model, [TinyRetrieval(), TinySTS()], settings, str(tmp_path))
    assert len(rows) == 2 * len(settings) + len(settings)
    for r in rows:
        assert np.isfinite(r["score"]) and -1 <= r["score"] <= 1

    # mteb's int8 score = the local evaluator's on the stored vectors of the same texts
    enc, prefix = model.encoder, TEMPLATE.format(RETRIEVAL_PROMPT)
    q = encode_storage(enc.encode([t for t, _ in QUERIES.values()], prompt=prefix), "int8")
    d = encode_storage(enc.encode([t for t, _ in DOCS.values()]), "int8")
    mine = local.retrieval_scores(q, d, list(QUERIES), list(DOCS), QRELS)
    int8 = next(r for r in rows if (r["dataset"], r["precision"]) == ("TinyRetrieval", "int8"))
    assert int8["score"] == pytest.approx(mine["ndcg_at_10"], abs=1e-5)


def test_unreachable_hub_is_an_error_saying_so(model_dir, tmp_path, monkeypatch):
    import mteb

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = MTEBEncoder.from_pretrained(model_dir)
    with pytest.raises(ConnectionError, match="Hugging Face Hub.*not reachable"):
        evaluate_mteb(model, [mteb.get_task("STS12")], [("fp32", None)], str(tmp_path / "a"))

    parser = argparse.ArgumentParser()
    add_eval_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["eval", "--model", model_dir, "--tasks", "STS12", "--output", str(tmp_path / "b")])
    with pytest.raises(SystemExit, match="error: could not get the data of mteb task STS12"):
        args.func(args)
    args = parser.parse_args(["eval", "--model", model_dir, "--tasks", "NoSuchTask", "--output", str(tmp_path / "c")])
    with pytest.raises(ValueError, match="mteb does not know"):
        args.func(args)


def test_cli_mteb_run_writes_summary_plot_and_mteb_folder(model_dir, tmp_path, monkeypatch):
    import json

    from bitembed_jax.eval import mteb_wrapper

    # in-memory tasks are not in mteb's registry: hand them to the command as if it had looked them up
    monkeypatch.setattr(mteb_wrapper, "resolve_tasks", lambda benchmark, tasks: [TinyRetrieval(), TinySTS()])
    parser = argparse.ArgumentParser()
    add_eval_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "out"
    args = parser.parse_args(["eval", "--model", model_dir, "--teacher", model_dir, "--tasks", "TinyRetrieval",
                              "TinySTS", "--precision", "fp32,binary", "--output", str(out)])
    args.func(args)
    rows = json.loads((out / "results.json").read_text())["rows"]
    name = model_name(model_dir)  # the model is named by its folder, the --teacher reference as the teacher
    assert [(r["model"], r["role"], r["dataset"], r["precision"]) for r in rows if r["dataset"] == MEAN] == [
        (name, "model", MEAN, "fp32"), (name, "model", MEAN, "binary"), ("teacher", "teacher", MEAN, "fp32")]
    sts = {(r["role"], r["precision"]): r["score"] for r in rows if r["dataset"] == "TinySTS"}
    assert sts["teacher", "fp32"] == pytest.approx(sts["model", "fp32"])  # the same folder as both
    assert (out / "plot.png").read_bytes()[:4] == b"\x89PNG"
    assert f"| {name} | mteb mean |" in (out / "summary.md").read_text()
    assert list((out / "mteb" / "results").iterdir())[0].name.startswith("bitembed-jax__m")
