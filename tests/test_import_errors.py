"""The importer refuses bad checkpoints before any work, naming the culprit; output is never half-written."""
import json
import os
import shutil

import pytest
from safetensors.numpy import load_file, save_file

from bitembed_jax.convert.hf_import import CheckpointImportError, convert, import_hf


def _copy(src, tmp_path, name="ckpt"):
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def _edit_config(path, **kw):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(kw)
    (path / "config.json").write_text(json.dumps(cfg))


def test_unsupported_model_type(tiny_qwen3, tmp_path):
    p = _copy(tiny_qwen3, tmp_path)
    _edit_config(p, model_type="llama")
    with pytest.raises(CheckpointImportError, match=r"model_type 'llama' is not supported.*gemma3_text, qwen3"):
        import_hf(str(p))


def test_missing_and_unexpected_tensors(tiny_qwen3, tmp_path):
    p = _copy(tiny_qwen3, tmp_path)
    tensors = load_file(p / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    tensors["model.layers.1.mlp.extra.weight"] = tensors["model.norm.weight"]
    save_file(tensors, p / "model.safetensors")
    with pytest.raises(CheckpointImportError) as e:
        import_hf(str(p))
    assert "missing tensors (1): model.layers.1.mlp.up_proj.weight" in str(e.value)
    assert "unexpected tensors (1): model.layers.1.mlp.extra.weight" in str(e.value)


def test_shape_mismatch(tiny_gemma3, tmp_path):
    p = _copy(tiny_gemma3, tmp_path)
    _edit_config(p, intermediate_size=96)
    with pytest.raises(CheckpointImportError,
                       match=r"layers.0.mlp.gate_proj.weight has shape \(128, 64\), expected \(96, 64\)"):
        import_hf(str(p))


def test_truncated_file(tiny_qwen3, tmp_path):
    p = _copy(tiny_qwen3, tmp_path)
    f = p / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointImportError, match=r"model.safetensors: cannot read the weights file"):
        import_hf(str(p))


def test_sharded_index_and_bin(tiny_qwen3, tmp_path):
    """A sharded safetensors index and a legacy pytorch_model.bin import to the same weights."""
    import numpy as np
    import torch

    ref, _ = import_hf(tiny_qwen3)
    tensors = load_file(os.path.join(tiny_qwen3, "model.safetensors"))
    names = sorted(tensors)
    sharded = tmp_path / "sharded"
    shutil.copytree(tiny_qwen3, sharded)
    os.remove(sharded / "model.safetensors")
    half = len(names) // 2
    weight_map = {}
    for i, part in enumerate((names[:half], names[half:])):
        fname = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({k: tensors[k] for k in part}, sharded / fname)
        weight_map.update({k: fname for k in part})
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    binf = tmp_path / "bin"
    shutil.copytree(tiny_qwen3, binf)
    os.remove(binf / "model.safetensors")
    torch.save({k: torch.tensor(v) for k, v in tensors.items()}, binf / "pytorch_model.bin")
    ids = np.arange(10, dtype=np.int32).reshape(2, 5)
    mask = np.ones_like(ids)
    want = np.asarray(ref(ids, mask).last_hidden_state)
    for folder in (sharded, binf):
        model, _ = import_hf(str(folder))
        np.testing.assert_array_equal(np.asarray(model(ids, mask).last_hidden_state), want)


def test_convert_refuses_overwrite_and_is_atomic(tiny_qwen3, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert(tiny_qwen3, str(out))
    assert (out / "keep.txt").read_text() == "user data"
    bad = _copy(tiny_qwen3, tmp_path, "bad")
    _edit_config(bad, intermediate_size=96)
    with pytest.raises(CheckpointImportError):
        convert(str(bad), str(out), overwrite=True)
    assert (out / "keep.txt").read_text() == "user data"
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]


@pytest.mark.parametrize("keep, named", [
    ((), r"ckpt: no tokenizer files \(tokenizer.json / tokenizer_config.json\); a model folder needs its tokenizer"),
    (("tokenizer.json",), r"ckpt: incomplete tokenizer \(only tokenizer.json\); a model folder needs "
                          r"tokenizer_config.json"),
])
def test_convert_refuses_a_folder_without_its_tokenizer(tiny_qwen3, tmp_path, monkeypatch, keep, named):
    from bitembed_jax.convert import hf_import
    from bitembed_jax.io.model_dir import TOKENIZER_FILES

    p = _copy(tiny_qwen3, tmp_path)
    for name in set(TOKENIZER_FILES) - set(keep):
        if (p / name).exists():
            os.remove(p / name)
    monkeypatch.setattr(hf_import, "TensorSource", lambda *_: pytest.fail("the weights were read"))
    with pytest.raises(CheckpointImportError, match=named):
        convert(str(p), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_convert_of_one_of_our_model_folders_says_what_it_is(tiny_qwen3, tmp_path):
    ours = convert(tiny_qwen3, str(tmp_path / "ours"), mode="bitnet")
    with pytest.raises(CheckpointImportError, match="ours is already a bitembed-jax model folder: use it as it is"):
        convert(ours, str(tmp_path / "again"))
    assert not (tmp_path / "again").exists()
