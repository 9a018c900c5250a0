"""Stream mode's pipeline in one process: each shard's slice of the files, exact resume from any position,
globs and folders, and one-line errors for inputs that name nothing."""
import json

import numpy as np
import pytest

from bitembed_jax.data.records import RecordError
from bitembed_jax.data.stream import StreamPipeline
from bitembed_jax.data.stream_files import expand_inputs
from tests.tokenizer_fixture import make_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_tokenizer(str(tmp_path_factory.mktemp("tok")))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Three JSONL files (with a blank line) and a Parquet file of several row groups: 161 records."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("corpus")
    (root / "sub").mkdir()
    for k in range(3):
        with open(root / f"f{k}.jsonl", "w") as f:
            for i in range(37):
                f.write(json.dumps({"query": f"q{k} {i}", "positive": f"p{k} {i}",
                                    "negatives": [f"n{k} {i}", f"m{k} {i}"]}) + "\n")
            f.write("\n")
    rows = [{"query": f"pq {i}", "positive": f"pp {i}", "negatives": [f"pn {i}"]} for i in range(50)]
    pq.write_table(pa.Table.from_pylist(rows), root / "sub" / "g.parquet", row_group_size=7)
    return root


def _stream(corpus, tokenizer, n, i, **kw):
    args = dict(global_batch_size=4 * n, max_query_len=8, max_passage_len=8, num_negatives=1, shuffle_window=13,
                seed=3, shard_index=i, shard_count=n, prefetch_batches=2)
    return StreamPipeline([str(corpus)], tokenizer, **{**args, **kw})


def _same(a, b):
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("n,i", [(2, 1), (6, 5)])
def test_a_restored_iterator_continues_with_the_same_batches(corpus, tokenizer, n, i):
    """Over epoch boundaries too (a shard holds 27 to 161 records; 30 batches of 4 cross some)."""
    p = _stream(corpus, tokenizer, n, i)
    want = [next(it) for it in [iter(p)] for _ in range(30)]
    for cut in (1, 23):
        it = iter(p)
        for _ in range(cut):
            next(it)
        saved = json.loads(json.dumps(it.get_state()))  # what the checkpoint stores (JSON)
        it.close()
        resumed = iter(p)
        resumed.set_state(saved)
        for w in want[cut:]:
            _same(w, next(resumed))
        resumed.close()


def test_shards_split_files_or_records_and_cover_the_corpus(corpus, tokenizer):
    def queries(n, i, batches):
        p = _stream(corpus, tokenizer, n, i, shuffle_window=1, num_negatives=0, global_batch_size=n)
        it = iter(p)
        got = [p._to_arrays.tokenize.tokenizer.decode(next(it)["query_ids"][0], skip_special_tokens=True)
               for _ in range(batches)]
        it.close()
        return p, got

    p2, _ = queries(2, 0, 1)
    assert p2.stride == (0, 1) and [f for _, f in p2.my_files] == p2.files[0::2]  # by file: 4 files >= 2
    p6, _ = queries(6, 1, 1)
    assert p6.stride == (1, 6) and len(p6.my_files) == 4  # by record: 4 files < 6 processes
    assert p6.describe() == "streaming records 1 mod 6 of 4 file(s), shuffle window 1"
    seen = set()
    for i in range(6):  # one epoch of every shard: disjoint, and together every record once
        p, got = queries(6, i, len(range(i, 37, 6)) * 3 + len(range(i, 50, 6)))
        assert not seen & set(got)
        seen |= set(got)
    assert len(seen) == 161


def test_inputs_globs_folders_and_their_errors(corpus, tmp_path):
    files = expand_inputs([str(corpus)])
    assert [f.rsplit("/", 1)[1] for f in files] == ["f0.jsonl", "f1.jsonl", "f2.jsonl", "g.parquet"]
    assert expand_inputs([str(corpus / "f*.jsonl"), str(corpus / "sub" / "g.parquet")]) == files
    (tmp_path / "empty").mkdir()
    for spec, msg in ((str(corpus / "*.txt"), "matches no .jsonl/.parquet file"),
                      (str(tmp_path / "empty"), "holds no .jsonl/.parquet file"),
                      (str(tmp_path / "missing.jsonl"), "not found")):
        with pytest.raises(FileNotFoundError, match=f"config.data.train_files: .*{msg}"):
            expand_inputs([spec])


def test_a_bad_record_names_its_file_and_line(tmp_path, tokenizer):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"query": "a", "positive": "b"}\n\n{"query": "c"}\n')
    p = StreamPipeline([str(path)], tokenizer, global_batch_size=2, max_query_len=8, max_passage_len=8)
    with pytest.raises(RecordError, match=rf"{path}:3: missing field 'positive'"):
        next(iter(p))
    p = StreamPipeline([str(path)], tokenizer, global_batch_size=1, max_query_len=8, max_passage_len=8,
                       num_negatives=1)
    with pytest.raises(RecordError, match=rf"{path}:1: no negatives, but config.data.num_negatives=1"):
        next(iter(p))
