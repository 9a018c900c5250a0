"""Remote-path helpers: the model folder of a run in a gs:// workdir is built locally, then copied over."""
import os

from etils import epath

from bitembed_jax.io import model_dir, paths


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
    loaded, _ = model_dir.load_model_dir(out)
    a, b = flat_params(nnx.state(model)), flat_params(nnx.state(loaded))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
