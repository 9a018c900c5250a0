"""Remote-path helpers: the model folder of a run in a gs:// workdir is built locally, then copied over."""
import os

import pytest

from etils import epath

from bitembed_jax.io import model_dir, paths
from bitembed_jax.io.load import load_model_dir


def test_copy_tree_copies_everything_and_writes_the_marker_last(tmp_path, monkeypatch):
    src = tmp_path / "src"
    (src / "params" / "sub").mkdir(parents=True)
    files = {"params/sub/0.bin": b"\x00\x01", "params/meta": b"m", "z_config.json": b"{}", "tok.json": b"t"}
    for rel, data in files.items():
        (src / rel).write_bytes(data)
    order = []
    real = epath.Path.write_bytes
    monkeypatch.setattr(epath.Path, "write_bytes", lambda self, data: (order.append(self.name), real(self, data))[1])
    dst = tmp_path / "dst"
    paths.copy_tree(str(src), str(dst), last="z_config.json")
    assert {str(p.relative_to(dst)): p.read_bytes() for p in dst.rglob("*") if p.is_file()} == files
    assert order[-1] == "z_config.json" and len(order) == len(files)


def test_save_model_dir_to_a_remote_folder(tiny_qwen3, tmp_path, monkeypatch):
    """The remote branch (exercised on a local path standing in for gs://): a loadable folder, no overwrite."""
    import pytest
    from flax import nnx

    from bitembed_jax.convert.hf_import import import_hf
    from bitembed_jax.io.state_paths import flat_params

    model, cfg = import_hf(tiny_qwen3, mode="bitnet")
    monkeypatch.setattr(paths, "is_remote", lambda p: True)
    out = str(tmp_path / "bucket" / "run" / "model")
    assert model_dir.save_model_dir(out, model, cfg, tokenizer_dir=tiny_qwen3) == out
    with pytest.raises(FileExistsError, match="--overwrite"):
        model_dir.save_model_dir(out, model, cfg)
    monkeypatch.undo()
    assert os.path.exists(os.path.join(out, "tokenizer.json"))
    loaded, _ = load_model_dir(out)
    a, b = flat_params(nnx.state(model)), flat_params(nnx.state(loaded))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    """A local folder standing in for gs://: paths under it take the remote branches; the cache is private."""
    root = tmp_path / "bucket"
    root.mkdir()
    monkeypatch.setattr(paths, "is_remote", lambda p: str(p).startswith(str(root)))
    monkeypatch.setenv("BITEMBED_CACHE", str(tmp_path / "cache"))
    return root


def test_local_copy_downloads_once_and_refreshes_when_the_remote_changes(bucket, monkeypatch):
    folder = bucket / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "sub" / "w.bin").write_bytes(b"\x01\x02")
    local = paths.local_copy(str(folder), "models")
    assert local.startswith(paths.cache_root()) and not paths.is_remote(local)
    assert open(os.path.join(local, "sub", "w.bin"), "rb").read() == b"\x01\x02"
    opened = []
    cls = type(epath.Path(str(folder)))
    real_open = cls.open
    monkeypatch.setattr(cls, "open", lambda self, *a, **k: (opened.append(self.name), real_open(self, *a, **k))[1])
    assert paths.local_copy(str(folder), "models") == local and opened == []  # unchanged: no download
    (folder / "sub" / "w.bin").write_bytes(b"\x01\x02\x03")  # replaced remotely: fetched again
    assert paths.local_copy(str(folder), "models") == local and sorted(opened) == ["config.json", "w.bin"]
    assert open(os.path.join(local, "sub", "w.bin"), "rb").read() == b"\x01\x02\x03"
    single = paths.local_copy(str(folder / "config.json"), "data")
    assert open(single).read() == "{}"
    with pytest.raises(FileNotFoundError, match="missing"):
        paths.local_copy(str(bucket / "missing"), "data")
    assert paths.local_copy("/some/local/path", "data") == "/some/local/path"


def test_training_with_every_path_remote(bucket, tiny_qwen3, tmp_path):
    """init model, training file and work dir all on the stand-in bucket: each host reads local copies, builds
    the dataset in its cache, and the run's outputs land in the bucket."""
    import json
    import shutil

    from tests.test_train import quick_cfg
    from bitembed_jax.convert.hf_import import convert
    from bitembed_jax.train.loop import train

    model = convert(tiny_qwen3, str(bucket / "init"), mode="bitnet")
    sample = quick_cfg(model).data.train_files[0]
    data = str(bucket / "pairs.jsonl")
    shutil.copy(sample, data)
    workdir = str(bucket / "run")
    out = train(quick_cfg(model, "--config.train.num_steps=2", "--config.checkpoint.every_steps=2",
                          f"--config.data.train_files=['{data}']"), workdir)
    assert out == os.path.join(workdir, "model") and os.path.exists(os.path.join(out, "bitembed_config.json"))
    saved = json.load(open(os.path.join(workdir, "config.json")))
    assert saved["init"]["model"] == model and saved["data"]["train_files"] == [data]  # the user's paths
    cache = paths.cache_root()
    assert os.listdir(os.path.join(cache, "models")) and os.listdir(os.path.join(cache, "data"))
    assert os.listdir(os.path.join(cache, "datasets")) and not os.path.exists(os.path.join(workdir, "dataset"))
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]  # uploaded at close
    assert [r["step"] for r in rows] == [1, 2]
    assert not os.path.exists("metrics.jsonl")  # nothing left beside the process


def test_encode_from_a_remote_training_workdir(bucket, tiny_qwen3, tmp_path):
    """`bitembed-jax encode --model gs://.../run` reads a local copy of the run's model folder."""
    import numpy as np

    from bitembed_jax.cli import main
    from bitembed_jax.convert.hf_import import convert

    convert(tiny_qwen3, str(bucket / "run" / "model"), mode="bitnet")
    texts = tmp_path / "texts.txt"
    texts.write_text("a first sentence\nand a second one\n")
    out = str(tmp_path / "vecs.npy")
    assert main(["encode", "--model", str(bucket / "run"), "--input", str(texts), "--out", out]) == 0
    assert np.load(out).shape[0] == 2
    assert os.listdir(os.path.join(paths.cache_root(), "models"))


def test_fingerprint_follows_names_and_contents_not_location(tmp_path):
    import shutil

    fingerprint = model_dir.fingerprint
    a = tmp_path / "a"
    (a / "params").mkdir(parents=True)
    (a / "bitembed_config.json").write_text("{}")
    (a / "params" / "w").write_bytes(b"\0" * (3 << 20))  # over one read block
    fp = fingerprint(str(a))
    assert fingerprint(str(shutil.copytree(a, tmp_path / "b"))) == fp
    (a / "params" / "w").write_bytes(b"\0" * (3 << 20) + b"\1")
    assert fingerprint(str(a)) != fp
    (a / "params" / "w").write_bytes(b"\0" * (3 << 20))
    (a / "params" / "w").rename(a / "params" / "v")  # the same bytes under another name
    assert fingerprint(str(a)) != fp
    with pytest.raises(FileNotFoundError, match="no/such: not a folder"):
        fingerprint(str(tmp_path / "no" / "such"))


def _modes(root):
    return {str(p.relative_to(root)): p.stat().st_mode & 0o777 for p in [root, *root.rglob("*")]}


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_folders_follow_the_umask(tiny_qwen3, tmp_path, umask):
    """convert and export write through a temporary folder (mkdtemp: 0700); what lands must have the modes a
    plain mkdir/open gives under the umask, or a server running as another user cannot load the model."""
    from bitembed_jax.convert.hf_import import convert
    from bitembed_jax.export.hf_export import export

    old = os.umask(umask)
    try:
        enc = tmp_path / "enc"
        convert(tiny_qwen3, str(enc), mode="bitnet")
        out = tmp_path / "export"
        export(str(enc), str(out), fmt="base3", log=lambda *a: None)
    finally:
        os.umask(old)
    import pathlib
    for root in (pathlib.Path(enc), pathlib.Path(out)):
        modes = _modes(root)
        want = {rel: (0o777 if (root / rel).is_dir() else 0o666) & ~umask for rel in modes}
        assert modes == want
        assert "model.safetensors" in {p.name for p in root.rglob("*")} or (root / "params").is_dir()


def test_replace_dir_keeps_the_old_folder_when_the_new_one_cannot_move(tmp_path, monkeypatch):
    out, tmp = tmp_path / "out", tmp_path / "new"
    out.mkdir()
    (out / "a").write_text("old")
    tmp.mkdir()
    (tmp / "a").write_text("new")
    real = os.replace

    def failing(src, dst):
        if str(src) == str(tmp):
            raise OSError("disk gone")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError, match="disk gone"):
        paths.replace_dir(str(tmp), str(out))
    assert (out / "a").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["new", "out"]
    monkeypatch.setattr(os, "replace", real)
    paths.replace_dir(str(tmp), str(out))
    assert (out / "a").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_dir_removes_the_scratch_of_a_killed_write_to_the_same_folder(tmp_path):
    for left in (".tmp-model-k1l2", ".tmp-modelx-k3"):  # a killed write of model, and one of another folder
        (tmp_path / left).mkdir()
    with paths.atomic_dir(str(tmp_path / "model")) as tmp:
        open(os.path.join(tmp, "f"), "w").close()
    assert sorted(os.listdir(tmp_path)) == [".tmp-modelx-k3", "model"]
