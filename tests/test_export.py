"""Export: base3 reloads in JAX to the same embeddings; bitnet-2bit loads in PyTorch with transformers."""
import os

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from bitembed_jax.convert.hf_import import convert
from bitembed_jax.export.formats import _linears, export
from bitembed_jax.export.load import load_export
from bitembed_jax.io.model_dir import load_model_dir
from bitembed_jax.models import embed
from tests.test_hf_parity import _batch


@pytest.fixture(scope="module")
def bitnet_dir(tiny_qwen3, tmp_path_factory):
    return convert(tiny_qwen3, str(tmp_path_factory.mktemp("enc") / "bitnet"), mode="bitnet")


@pytest.mark.parametrize("norm", ["per_linear", "subln"])
def test_base3_reload_gives_the_checkpoints_embeddings(tiny_gemma3, tmp_path, norm):
    ckpt = convert(tiny_gemma3, str(tmp_path / "ckpt"), mode="bitnet", norm=norm)
    out = export(ckpt, str(tmp_path / "exp"), fmt="base3")
    model, _ = load_model_dir(ckpt)
    reloaded, _ = load_export(out)
    ids, mask = _batch()
    np.testing.assert_allclose(np.asarray(embed(reloaded, ids, mask)), np.asarray(embed(model, ids, mask)),
                               rtol=0, atol=2e-6)
    for name in ("README.md", "tokenizer.json", "bitembed_config.json"):
        assert os.path.exists(os.path.join(out, name))
    packed = {k: v for k, v in load_file(os.path.join(out, "model.safetensors")).items() if k.endswith(".base3")}
    kernels = [np.prod(lin.kernel.shape) for lin in _linears(model).values()]
    assert len(packed) == len(kernels) == 7 * 4
    assert sum(v.nbytes for v in packed.values()) == sum(-(-int(n) // 5) for n in kernels)  # 1.6 bits/weight


def test_bitnet_2bit_loads_in_transformers_and_matches(bitnet_dir, tmp_path):
    from transformers import AutoModel

    out = export(bitnet_dir, str(tmp_path / "hf"), fmt="bitnet-2bit")
    pt = AutoModel.from_pretrained(out, dtype=torch.float32, attn_implementation="eager").eval()
    assert type(pt.layers[0].self_attn.q_proj).__name__ == "BitLinear"
    ids, mask = _batch()
    with torch.no_grad():
        want = pt(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask)).last_hidden_state
    model, _ = load_model_dir(bitnet_dir)
    got = np.asarray(model(ids, mask).last_hidden_state)
    real = mask.astype(bool)
    diff = np.abs(got[real] - want.numpy()[real])
    # a float-order difference can flip one activation's int8 rounding; the rest agrees to float precision
    assert np.median(diff) < 1e-5 and diff.max() < 5e-2, (np.median(diff), diff.max())


def test_refusals(bitnet_dir, tiny_qwen3, tmp_path):
    subln = convert(tiny_qwen3, str(tmp_path / "subln"), mode="bitnet", norm="subln")
    with pytest.raises(ValueError, match="--format base3"):
        export(subln, str(tmp_path / "x"), fmt="bitnet-2bit")
    fp = convert(tiny_qwen3, str(tmp_path / "fp"), mode="fp")
    with pytest.raises(ValueError, match="fp model"):
        export(fp, str(tmp_path / "y"), fmt="base3")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep").write_text("x")
    with pytest.raises(FileExistsError, match="--overwrite"):
        export(bitnet_dir, str(tmp_path / "busy"), fmt="base3")
    assert (tmp_path / "busy" / "keep").read_text() == "x"


class FakeHub:
    def __init__(self):
        self.calls = []

    def create_repo(self, **kw):
        self.calls.append(("create_repo", kw))

    def upload_folder(self, **kw):
        self.calls.append(("upload_folder", kw, sorted(os.listdir(kw["folder_path"]))))


def test_push_to_hub_sends_the_folder_and_never_the_token(bitnet_dir, tmp_path, monkeypatch, capsys):
    from bitembed_jax.export.hub import push_to_hub

    secret = "hf_SECRET_token_value_123"
    monkeypatch.setenv("HF_TOKEN", secret)
    out = export(bitnet_dir, str(tmp_path / "hf"), fmt="bitnet-2bit")
    hub = FakeHub()
    push_to_hub(out, "org/bitnet-embed", client=hub)
    assert hub.calls[0] == ("create_repo", {"repo_id": "org/bitnet-embed", "private": False, "exist_ok": True,
                                            "repo_type": "model"})
    name, kw, files = hub.calls[1]
    assert name == "upload_folder" and kw["folder_path"] == out
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json"} <= set(files)
    captured = capsys.readouterr()
    assert secret not in captured.out + captured.err
    for root, _, names in os.walk(out):
        for n in names:
            assert secret.encode() not in open(os.path.join(root, n), "rb").read()
    with pytest.raises(ValueError, match="ORG/NAME"):
        push_to_hub(out, "noslash", client=hub)
