"""config.data.dataset_dir holding a prepared dataset: used as it is, checked against named training files, and
the one-line errors and cost notes of the other cases (in one process; tests/test_data_pod.py runs pods)."""
import json
import os

import pytest

from bitembed_jax.config_loader import apply_overrides, load_config_file
from bitembed_jax.data.tfds_builder import build_dataset
from bitembed_jax.io import paths
from bitembed_jax.train.config_checks import validate_config
from bitembed_jax.train.data_setup import ensure_dataset, needs_local_files

QUICKSTART = os.path.join(os.path.dirname(__file__), "..", "configs", "quickstart.py")


def _pairs(path, n, tag="q"):
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"query": f"{tag} {i}", "positive": f"p {i}"}) + "\n")
    return str(path)


def _cfg(*overrides):
    return apply_overrides(load_config_file(QUICKSTART), list(overrides))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepared")
    src = _pairs(root / "a.jsonl", 40)
    build_dataset([src], str(root / "ds"))
    return {"root": root, "src": src, "ds": str(root / "ds")}


def test_a_prepared_dataset_is_read_as_it_is(prepared, tmp_path):
    cfg = _cfg("--config.data.train_files=[]", f"--config.data.dataset_dir={prepared['ds']}")
    validate_config(cfg, 8)
    assert not needs_local_files(cfg)  # nothing to copy to the hosts
    lines = []
    assert ensure_dataset(cfg, str(tmp_path / "run"), log=lines.append) == prepared["ds"]
    assert lines == [f"reading the prepared dataset {prepared['ds']} in place (40 pairs), each process its share"]
    assert not os.path.exists(tmp_path / "run")
    same = _cfg(f"--config.data.train_files=['{prepared['src']}']", f"--config.data.dataset_dir={prepared['ds']}")
    assert ensure_dataset(same, str(tmp_path / "run"), log=lambda *a: None) == prepared["ds"]


def test_training_files_that_disagree_with_the_prepared_dataset_are_one_line(prepared, tmp_path):
    other = _pairs(tmp_path / "b.jsonl", 40, tag="other")
    cfg = _cfg(f"--config.data.train_files=['{other}']", f"--config.data.dataset_dir={prepared['ds']}")
    with pytest.raises(ValueError, match=r"config.data.dataset_dir: .* does not match config.data.train_files "
                                         r"\(the list of input files changed\); leave train_files empty"):
        ensure_dataset(cfg, str(tmp_path / "run"), log=lambda *a: None)


def test_no_files_and_no_prepared_dataset_is_an_error_before_any_work(tmp_path):
    (tmp_path / "empty").mkdir()
    cfg = _cfg("--config.data.train_files=[]", f"--config.data.dataset_dir={tmp_path / 'empty'}")
    with pytest.raises(FileNotFoundError, match="no prepared dataset in .*empty .*train_files is empty"):
        validate_config(cfg, 8)
    with pytest.raises(ValueError, match="config.data.train_files is empty"):
        validate_config(_cfg("--config.data.train_files=[]"), 8)
    with pytest.raises(ValueError, match="config.data.mode='batch' is not one of prepared, stream"):
        validate_config(_cfg("--config.data.mode=batch"), 8, check_paths=False)


def test_stream_mode_copies_nothing_and_the_per_host_build_says_what_it_costs(prepared, tmp_path, monkeypatch):
    assert not needs_local_files(_cfg("--config.data.mode=stream"))
    bucket = tmp_path / "bucket"  # a local folder standing in for gs://, as in tests/test_paths.py
    bucket.mkdir()
    monkeypatch.setattr(paths, "is_remote", lambda p: str(p).startswith(str(bucket)))
    monkeypatch.setenv("BITEMBED_CACHE", str(tmp_path / "cache"))
    cfg = _cfg(f"--config.data.train_files=['{prepared['src']}']")
    assert needs_local_files(cfg)
    lines = []
    out = ensure_dataset(cfg, str(bucket / "run"), log=lines.append)
    assert out.startswith(str(tmp_path / "cache"))
    size = os.path.getsize(prepared["src"]) / 1e6
    assert lines[0] == (f"building the dataset on every host (1), each into its own cache {out}: 1 training files "
                        f"({size:.1f} MB) copied to every host and the whole dataset built by each; build it once on "
                        "shared storage (bitembed-jax data build ... --out gs://...) and pass it as "
                        "config.data.dataset_dir to skip both")
