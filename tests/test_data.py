"""Data layer: record validation, the ArrayRecord build, and the grain batch pipeline."""
import json
import os

import numpy as np
import pytest

from bitembed_jax.data import PairPipeline, RecordError, build_dataset, needs_rebuild
from bitembed_jax.data.tokenize import Tokenize
from tests.hf_fixtures import SHARED_DATA
from tests.tokenizer_fixture import make_tokenizer

SAMPLE = os.path.join(os.path.dirname(__file__), "..", "bitembed_jax", "data", "sample", "pairs.jsonl")
BOOLQ = os.path.join(SHARED_DATA, "boolq", "pairs.jsonl")


def write_jsonl(path, lines):
    with open(path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    return str(path)


def rec(i, n_neg=0):
    return {"query": f"question {i}", "positive": f"answer passage {i}",
            "negatives": [f"wrong passage {i}.{j}" for j in range(n_neg)]}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_tokenizer(str(tmp_path_factory.mktemp("tok")))


@pytest.fixture(scope="module")
def sample_ds(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("sample") / "ds")
    build_dataset([SAMPLE], out)
    return out


@pytest.fixture(scope="module")
def neg_ds(tmp_path_factory):
    """40 records with 1 to 3 negatives each."""
    d = tmp_path_factory.mktemp("neg")
    out = str(d / "ds")
    build_dataset([write_jsonl(d / "n.jsonl", [rec(i, 1 + i % 3) for i in range(40)])], out)
    return out


def take(pipeline_or_iter, n):
    it = iter(pipeline_or_iter)
    return [next(it) for _ in range(n)]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


# ---------------------------------------------------------------- build


def test_build_from_jsonl_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    jsonl = write_jsonl(tmp_path / "a.jsonl", [{**rec(0, 2), "answer": True, "source": "x"}, rec(1)])
    table = pa.table({"query": ["pq 0", "pq 1"], "positive": ["pp 0", "pp 1"],
                      "negatives": [["pn 0"], None], "extra": [1, 2]})
    parquet = str(tmp_path / "b.parquet")
    pq.write_table(table, parquet)
    summary = build_dataset([jsonl, parquet], tmp_path / "ds")
    assert (summary.count, summary.splits, summary.skipped) == (4, {"train": 4}, 0)

    import tensorflow_datasets as tfds
    src = tfds.builder_from_directory(str(tmp_path / "ds")).as_data_source("train")
    got = [(r["query"].decode(), r["positive"].decode(), [n.decode() for n in r["negatives"]]) for r in src]
    assert got == [("question 0", "answer passage 0", ["wrong passage 0.0", "wrong passage 0.1"]),
                   ("question 1", "answer passage 1", []), ("pq 0", "pp 0", ["pn 0"]), ("pq 1", "pp 1", [])]


BAD_LINES = {
    "malformed": ('{"query": "q", "positive": ', "malformed JSON"),
    "missing": (json.dumps({"query": "q"}), "missing field 'positive'"),
    "empty": (json.dumps({"query": "", "positive": "p"}), "'query' is empty"),
    "whitespace": (json.dumps({"query": "q", "positive": " \t "}), "'positive' is empty"),
    "wrong_type": (json.dumps({"query": 3, "positive": "p"}), "'query' must be a string"),
    "negatives_not_list": (json.dumps({"query": "q", "positive": "p", "negatives": "n"}), "must be a list"),
    "negative_not_str": (json.dumps({"query": "q", "positive": "p", "negatives": ["n", 5]}), "negatives[1]"),
    "not_object": ("[1, 2]", "expected an object"),
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_bad_record_names_file_and_line(tmp_path, case):
    line, reason = BAD_LINES[case]
    path = write_jsonl(tmp_path / "bad.jsonl", [rec(0), "", line, rec(1)])  # bad record on line 3
    with pytest.raises(RecordError) as e:
        build_dataset([path], tmp_path / "out")
    assert f"{path}:3" in str(e.value) and reason in str(e.value)
    assert os.listdir(tmp_path) == ["bad.jsonl"]  # nothing written, no temp folder left


def test_parquet_error_names_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    path = str(tmp_path / "bad.parquet")
    pq.write_table(pa.table({"query": ["a", "b", "c"], "positive": ["x", "y", "  "]}), path)
    with pytest.raises(RecordError, match=f"{path}: row index 2: field 'positive' is empty"):
        build_dataset([path], tmp_path / "out")


def test_all_files_validated_before_writing(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", [rec(i) for i in range(5)])
    bad = write_jsonl(tmp_path / "later.jsonl", [rec(0), "not json"])
    with pytest.raises(RecordError, match=f"{bad}:2"):
        build_dataset([good, bad], tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == ["good.jsonl", "later.jsonl"]


def test_skip_bad_counts_and_reports(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [rec(0), "{oops", rec(1), json.dumps({"query": "q"}), rec(2)])
    summary = build_dataset([path], tmp_path / "out", skip_bad=True)
    assert (summary.count, summary.skipped) == (3, 2)
    assert f"{path}:2: malformed JSON" in summary.skip_reasons[0]
    assert f"{path}:4: missing field 'positive'" in summary.skip_reasons[1]


def test_empty_dataset_is_an_error(tmp_path):
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    all_bad = write_jsonl(tmp_path / "bad.jsonl", ["{", "[]"])
    with pytest.raises(RecordError, match=f"no valid records in {empty}, {all_bad}.*2 bad records skipped"):
        build_dataset([empty, all_bad], tmp_path / "out", skip_bad=True)


def test_rebuild_detection_and_overwrite(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [rec(i) for i in range(4)])
    out = tmp_path / "ds"
    build_dataset([path], out)
    assert needs_rebuild(out, [path]) is None
    with pytest.raises(FileExistsError, match="up to date.*overwrite=True"):
        build_dataset([path], out)
    assert "options changed" in needs_rebuild(out, [path], max_negatives=1)
    write_jsonl(path, [rec(i) for i in range(5)])
    assert "changed since the build" in needs_rebuild(out, [path])
    with pytest.raises(FileExistsError, match="stale"):
        build_dataset([path], out)
    assert build_dataset([path], out, overwrite=True).count == 5
    assert sorted(os.listdir(tmp_path)) == ["a.jsonl", "ds"]

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a dataset built by build_dataset"):
        build_dataset([path], foreign, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_a_killed_builds_scratch_folder_is_removed_by_the_next_build(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [rec(i) for i in range(4)])
    for left in (".ds.tmp-k1l2", ".other.tmp-x"):  # a killed build of ds, and scratch of another folder
        (tmp_path / left).mkdir()
        (tmp_path / left / "partial.array_record").write_bytes(b"half written")
    build_dataset([path], tmp_path / "ds")
    assert sorted(os.listdir(tmp_path)) == [".other.tmp-x", "a.jsonl", "ds"]


def test_a_runs_dataset_build_says_one_line_of_its_own(tmp_path, capfd, monkeypatch):
    """What is built, from which files, how many pairs; none of TFDS's narration (its builder config, a
    "download" of local files, progress bars named after the scratch folder). Our own bar appears only for a
    build longer than PROGRESS_DELAY_S, which a loaded machine can reach: the delay is lifted out of reach."""
    from bitembed_jax.config_loader import load_config_file
    from bitembed_jax.data import tfds_builder
    from bitembed_jax.train.data_setup import ensure_dataset

    monkeypatch.setattr(tfds_builder, "PROGRESS_DELAY_S", 1e9)
    cfg = load_config_file(os.path.join(os.path.dirname(__file__), "..", "configs", "quickstart.py"))
    lines = []
    path = ensure_dataset(cfg, str(tmp_path), log=lines.append)
    assert capfd.readouterr() == ("", "")
    assert lines == [f"built dataset {path} from {os.path.abspath(SAMPLE)}: 240 pairs"]


def test_validation_split_is_seeded(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [rec(i) for i in range(50)])

    def split_queries(out, seed):
        import tensorflow_datasets as tfds
        build_dataset([path], out, validation_fraction=0.2, seed=seed)
        b = tfds.builder_from_directory(str(out))
        return {s: {r["query"] for r in b.as_data_source(s)} for s in ("train", "validation")}

    a, again, other = (split_queries(tmp_path / n, s) for n, s in (("a", 1), ("b", 1), ("c", 2)))
    assert len(a["train"]) == 40 and len(a["validation"]) == 10 and not a["train"] & a["validation"]
    assert a == again and a != other


# ---------------------------------------------------------------- pipeline


def pipeline(ds, tokenizer, **kw):
    args = dict(global_batch_size=8, max_query_len=16, max_passage_len=24, seed=0)
    return PairPipeline(ds, tokenizer, **{**args, **kw})


def test_batch_format(sample_ds, neg_ds, tokenizer):
    b = take(pipeline(sample_ds, tokenizer), 1)[0]
    assert {k: (v.shape, v.dtype) for k, v in b.items()} == {
        "query_ids": ((8, 16), np.int32), "query_mask": ((8, 16), np.int32),
        "passage_ids": ((8, 24), np.int32), "passage_mask": ((8, 24), np.int32)}
    b = take(pipeline(neg_ds, tokenizer, num_negatives=2), 1)[0]
    assert b["negative_ids"].shape == b["negative_mask"].shape == (8, 2, 24)


def test_same_seed_same_batches(sample_ds, tokenizer):
    a = take(pipeline(sample_ds, tokenizer, seed=7), 3)
    assert_batches_equal(a, take(pipeline(sample_ds, tokenizer, seed=7), 3))
    b = take(pipeline(sample_ds, tokenizer, seed=8), 3)
    assert not np.array_equal(a[0]["passage_ids"], b[0]["passage_ids"])


def test_unshuffled_keeps_file_order(sample_ds, tokenizer):
    with open(SAMPLE, encoding="utf-8") as f:
        first = [json.loads(line)["positive"] for line in f][:8]
    b = take(pipeline(sample_ds, tokenizer, shuffle=False, max_passage_len=256), 1)[0]
    assert [tokenizer.decode(r[m == 1], skip_special_tokens=True)
            for r, m in zip(b["passage_ids"], b["passage_mask"])] == first


def test_epochs_cover_records_and_reshuffle(sample_ds, tokenizer):
    p = pipeline(sample_ds, tokenizer, num_epochs=2, max_passage_len=64)
    assert p.steps_per_epoch == 240 // 8
    batches = list(p)
    assert len(batches) == 2 * p.steps_per_epoch
    epochs = [np.concatenate([b["passage_ids"] for b in batches[e * 30:(e + 1) * 30]]) for e in range(2)]
    for rows in epochs:  # the sample's passages are distinct, so an epoch has no repeated row
        assert len({r.tobytes() for r in rows}) == 240
    assert not np.array_equal(epochs[0], epochs[1])


def test_hosts_get_disjoint_slices_of_the_global_batch(sample_ds, tokenizer):
    full = take(pipeline(sample_ds, tokenizer), 4)
    hosts = [take(pipeline(sample_ds, tokenizer, shard_index=h, shard_count=2), 4) for h in range(2)]
    for step, global_batch in enumerate(full):
        for key, value in global_batch.items():
            assert hosts[0][step][key].shape[0] == 4
            np.testing.assert_array_equal(np.concatenate([hosts[0][step][key], hosts[1][step][key]]), value)
        rows = [{r.tobytes() for r in hosts[h][step]["passage_ids"]} for h in range(2)]
        assert not rows[0] & rows[1]


def test_resume_from_iterator_state(sample_ds, neg_ds, tokenizer):
    for ds, kw in ((sample_ds, {}), (neg_ds, {"num_negatives": 3})):
        it = iter(pipeline(ds, tokenizer, **kw))
        steps = pipeline(ds, tokenizer, **kw).steps_per_epoch
        for _ in range(steps - 1):  # the saved position is just before an epoch boundary
            next(it)
        state = it.get_state()
        expected = [next(it) for _ in range(3)]
        resumed = iter(pipeline(ds, tokenizer, **kw))
        resumed.set_state(state)
        assert_batches_equal([next(resumed) for _ in range(3)], expected)


def test_negatives_come_from_the_record(neg_ds, tokenizer):
    p = pipeline(neg_ds, tokenizer, num_negatives=3, max_query_len=32, max_passage_len=32)
    for b in take(p, 5):
        for row in range(8):
            query = tokenizer.decode(b["query_ids"][row][b["query_mask"][row] == 1], skip_special_tokens=True)
            i = int(query.split()[-1])
            negs = [tokenizer.decode(n[m == 1], skip_special_tokens=True)
                    for n, m in zip(b["negative_ids"][row], b["negative_mask"][row])]
            own = {f"wrong passage {i}.{j}" for j in range(1 + i % 3)}
            assert set(negs) == own  # k=3 covers every own negative, repeating when there are fewer


def test_missing_negatives_fail_at_construction(sample_ds, tokenizer):
    with pytest.raises(ValueError, match=r"num_negatives=1 but 173 of 240 records .* have no negatives"):
        pipeline(sample_ds, tokenizer, num_negatives=1)


def test_worker_processes_give_the_same_batches_and_resume(sample_ds, tokenizer):
    expected = take(pipeline(sample_ds, tokenizer), 3)
    it = iter(pipeline(sample_ds, tokenizer, worker_count=1))
    assert_batches_equal([next(it) for _ in range(2)], expected[:2])
    resumed = iter(pipeline(sample_ds, tokenizer, worker_count=1))
    resumed.set_state(it.get_state())
    assert_batches_equal([next(resumed)], expected[2:])


@pytest.mark.parametrize("kw, message", [
    ({"split": "validation"}, "split 'validation' not in"),
    ({"global_batch_size": 256}, "less than one global batch"),
    ({"global_batch_size": 6, "shard_count": 4}, "multiple of shard_count=4"),
    ({"shard_index": 2, "shard_count": 2}, "shard_index must be in"),
])
def test_pipeline_argument_errors(sample_ds, tokenizer, kw, message):
    with pytest.raises(ValueError, match=message):
        pipeline(sample_ds, tokenizer, **kw)


# ---------------------------------------------------------------- tokenization


def test_tokenizer_fixture_reloads_offline(tmp_path):
    from transformers import AutoTokenizer
    make_tokenizer(str(tmp_path))
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    assert (tok.eos_token, tok.pad_token, len(tok)) == ("<|endoftext|>", "<|pad|>", 1000)
    assert tok.decode(tok("Brasília, a² + b² = c²")["input_ids"]) == "Brasília, a² + b² = c²"


def test_truncation_eos_and_padding(tokenizer):
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    long_text = "The Pacific Ocean is the largest and deepest ocean on Earth."
    plain = tokenizer(long_text, add_special_tokens=True)["input_ids"]
    ids, mask = Tokenize(tokenizer)(["ocean", long_text], max_len=8)
    short = tokenizer("ocean")["input_ids"] + [eos]
    n = len(short)
    assert ids[0].tolist() == short + [pad] * (8 - n) and mask[0].tolist() == [1] * n + [0] * (8 - n)
    assert ids[1].tolist() == plain[:7] + [eos] and mask[1].all()  # truncation leaves room for EOS

    ids, mask = Tokenize(tokenizer, add_eos=False)([long_text], max_len=8)
    assert ids[0].tolist() == plain[:8] and eos not in ids[0]


def test_no_double_eos_when_tokenizer_adds_it(tmp_path):
    from tokenizers import processors
    tok = make_tokenizer(str(tmp_path))
    eos = tok.eos_token_id
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="$A <|endoftext|>", special_tokens=[("<|endoftext|>", eos)])
    t = Tokenize(tok)
    assert t.tokenizer_adds_eos
    ids, mask = t(["ocean", "The Pacific Ocean is the largest and deepest ocean on Earth."], max_len=6)
    n = int(mask[0].sum())
    assert ids[0, n - 1] == eos and eos not in ids[0, :n - 1]
    assert ids[1, -1] == eos and eos not in ids[1, :-1]


def test_query_instruction_template(sample_ds, tokenizer):
    def first_queries(**kw):
        b = take(pipeline(sample_ds, tokenizer, max_query_len=96, **kw), 1)[0]
        return [tokenizer.decode(r[m == 1], skip_special_tokens=True) for r, m in zip(b["query_ids"], b["query_mask"])]

    plain = first_queries()
    assert first_queries(instruction="Find the passage") == [f"Instruct: Find the passage\nQuery: {q}" for q in plain]
    assert first_queries(instruction="find", query_template="{instruction}: {query}") == [f"find: {q}" for q in plain]
    with pytest.raises(ValueError, match="must contain"):
        pipeline(sample_ds, tokenizer, instruction="x", query_template="no placeholder")


# ---------------------------------------------------------------- real data


def test_build_and_stream_boolq(tmp_path, tokenizer):
    summary = build_dataset([BOOLQ], tmp_path / "boolq", validation_fraction=0.05, seed=0)
    assert summary.skipped == 0 and summary.count == sum(1 for line in open(BOOLQ) if line.strip())
    p = pipeline(str(tmp_path / "boolq"), tokenizer, global_batch_size=16, max_passage_len=128)
    b = take(p, 1)[0]
    for ids, mask in zip(b["passage_ids"], b["passage_mask"]):
        n = int(mask.sum())
        assert mask[:n].all() and not mask[n:].any() and ids[n - 1] == tokenizer.eos_token_id
    assert b["passage_mask"].all(axis=1).any()  # long Wikipedia paragraphs get truncated to the full length
    val = pipeline(str(tmp_path / "boolq"), tokenizer, split="validation", shuffle=False, num_epochs=1,
                   global_batch_size=16)
    assert len(list(val)) == summary.splits["validation"] // 16


def test_config_keys_reach_the_build(tmp_path):
    """config.data.max_negatives and config.data.validation_fraction are what the run's dataset is built with
    (and checked against when it is reused)."""
    import tensorflow_datasets as tfds

    from bitembed_jax.config_loader import apply_overrides, load_config_file
    from bitembed_jax.train.config_checks import validate_config
    from bitembed_jax.train.data_setup import ensure_dataset

    path = write_jsonl(tmp_path / "a.jsonl", [rec(i, n_neg=3) for i in range(40)])
    cfg = load_config_file(os.path.join(os.path.dirname(__file__), "..", "configs", "quickstart.py"))
    cfg = apply_overrides(cfg, [f"--config.data.train_files=['{path}']", "--config.data.max_negatives=1",
                                "--config.data.validation_fraction=0.25"])
    out = ensure_dataset(cfg, str(tmp_path / "run"), log=lambda *a: None)
    b = tfds.builder_from_directory(out)
    train, val = list(b.as_data_source("train")), list(b.as_data_source("validation"))
    assert (len(train), len(val)) == (30, 10)
    assert {len(r["negatives"]) for r in train + val} == {1}
    changed = apply_overrides(cfg.copy_and_resolve_references(), ["--config.data.max_negatives=2"])
    with pytest.raises(ValueError, match="does not match config.data.train_files"):
        ensure_dataset(changed, str(tmp_path / "run"), log=lambda *a: None)
    for bad, match in ((["--config.data.max_negatives=-2"], "config.data.max_negatives=-2 must be >= 0"),
                       (["--config.data.num_negatives=2"], "config.data.num_negatives=2 hard negatives"),
                       (["--config.data.validation_fraction=1.0"], r"config.data.validation_fraction=1.0 must be")):
        with pytest.raises(ValueError, match=match):
            validate_config(apply_overrides(cfg.copy_and_resolve_references(), bad), 8, check_paths=False)
