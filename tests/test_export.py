"""Export: base3 and bitnet-2bit reload in JAX to the checkpoint's exact embeddings; bitnet-2bit loads in
PyTorch (transformers' BitNet integration, sentence-transformers) with no remote code and matches ours."""
import argparse
import json
import os
import shutil

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import load_file

from bitembed_jax.convert.hf_config import from_hf_config, to_hf_config
from bitembed_jax.convert.hf_import import convert
from bitembed_jax.encode import Encoder
from bitembed_jax.export.cli_export import add_export_parser
from bitembed_jax.export.hf_export import export, refusal
from bitembed_jax.export.model_card import export_sizes, tensor_sizes
from bitembed_jax.export.st_files import write_tokenizer
from bitembed_jax.io.load import load_export, load_model_dir
from bitembed_jax.io.model_dir import abstract_model, read_config
from bitembed_jax.layers.bitlinear import linears
from bitembed_jax.quant.packing import unpack_base3, unpack_bitnet_2bit
from bitembed_jax.models import embed
from tests.test_hf_parity import _batch

PROMPT = "Instruct: find the passage\nQuery: "
TEXTS = ["sentence number 3 about topic 2", "alpha beta gamma delta with words", "x",
         "sentence number 150 about topic 3 with words alpha beta gamma delta " * 3]


def _checkpoint(hf, out, **opts):
    """A bitnet model folder with a query prompt and trained-for precisions in its config, as training writes."""
    path = convert(hf, str(out), mode="bitnet", **opts)
    cfg_path = os.path.join(path, "bitembed_config.json")
    with open(cfg_path) as f:
        meta = json.load(f)
    meta.update(prompts={"query": PROMPT}, precisions=["fp32", "int8", "binary"], matryoshka_dims=[0, 32])
    with open(cfg_path, "w") as f:
        json.dump(meta, f)
    return path


@pytest.fixture(scope="module")
def ckpts(tiny_qwen3, tiny_gemma3, tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpts")
    return {
        "qwen3": _checkpoint(tiny_qwen3, d / "qwen3", norm="per_linear"),
        # mean pooling and bidirectional attention: the other ST pooling and Gemma3 config path
        "gemma3": _checkpoint(tiny_gemma3, d / "gemma3", norm="per_linear", pooling="mean", attention="bidirectional"),
        "gemma3_subln": _checkpoint(tiny_gemma3, d / "gemma3_subln", norm="subln", per_row_scale=True),
        "qwen3_none": _checkpoint(tiny_qwen3, d / "qwen3_none", norm="none"),
    }


def _embeddings(model):
    ids, mask = _batch()
    return np.asarray(embed(model, ids, mask))


@pytest.mark.parametrize("name", ["qwen3", "gemma3_subln"])
def test_base3_reloads_to_the_checkpoints_exact_embeddings(ckpts, tmp_path, name):
    out = export(ckpts[name], str(tmp_path / "b3"), fmt="base3")
    model, cfg = load_model_dir(ckpts[name])
    reloaded, cfg2 = load_export(out)
    assert cfg2 == cfg
    np.testing.assert_array_equal(_embeddings(reloaded), _embeddings(model))  # bit for bit, eager
    # and through the jitted Encoder, with the exported tokenizer
    want = Encoder.from_pretrained(ckpts[name]).encode(TEXTS, prompt=PROMPT)
    np.testing.assert_array_equal(Encoder.from_pretrained(out).encode(TEXTS, prompt=PROMPT), want)

    assert {"README.md", "tokenizer.json", "tokenizer_config.json", "bitembed_config.json", "model.safetensors"} <= set(
        os.listdir(out))
    assert "config.json" not in os.listdir(out)  # AutoModel cannot read base3: no HF config to mislead it
    with safe_open(os.path.join(out, "model.safetensors"), framework="np") as f:
        meta = f.metadata()
    assert meta["format"] == "bitembed-base3" and meta["version"] == "1"
    lin_meta = json.loads(meta["linears"])
    tensors = load_file(os.path.join(out, "model.safetensors"))
    lins = linears(model)
    assert set(lin_meta) == set(lins) and len(lins) == 7 * cfg.num_layers
    for path, lin in lins.items():
        q, gamma = lin.frozen()
        np.testing.assert_array_equal(unpack_base3(tensors[path + ".base3"], lin_meta[path]["shape"]), np.asarray(q))
        assert tensors[path + ".base3"].nbytes == -(-q.size // 5)  # 1.6 bits per weight
        np.testing.assert_array_equal(tensors[path + ".scale"], np.asarray(gamma).reshape(-1))
        if not lin.per_row_scale:
            assert np.float32(lin_meta[path]["scale"]) == np.float32(gamma)


CASES = [("qwen3", "bitlinear"), ("gemma3", "bitlinear"), ("qwen3", "autobitlinear"), ("qwen3_none", "bitlinear")]


@pytest.mark.parametrize("name,linear_class", CASES)
def test_bitnet_2bit_loads_in_transformers_and_sentence_transformers(ckpts, tmp_path, name, linear_class):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    ckpt = ckpts[name]
    out = export(ckpt, str(tmp_path / "hf"), fmt="bitnet-2bit", linear_class=linear_class)
    model, cfg = load_model_dir(ckpt)
    with open(os.path.join(out, "config.json")) as f:
        hf = json.load(f)
    assert hf["quantization_config"] == {"quant_method": "bitnet", "linear_class": linear_class,
                                         "quantization_mode": "offline", "use_rms_norm": cfg.norm == "per_linear",
                                         "rms_norm_eps": cfg.rms_norm_eps}
    tensors = load_file(os.path.join(out, "model.safetensors"))
    q_proj = "layers.0.self_attn.q_proj"
    q, gamma = model.layers[0].self_attn.q_proj.frozen()
    np.testing.assert_array_equal(unpack_bitnet_2bit(tensors[q_proj + ".weight"], q.shape[0]), np.asarray(q))
    ws = tensors[q_proj + ".weight_scale"]
    assert ws.shape == (1,) and ws[0] == (np.float32(1) / np.float32(gamma) if linear_class == "bitlinear" else gamma)
    assert (q_proj + ".rms_norm.weight" in tensors) == (cfg.norm == "per_linear")

    # plain AutoModel, no trust_remote_code: transformers' BitNet layers
    pt = AutoModel.from_pretrained(out, dtype=torch.float32, attn_implementation="eager").eval()
    assert type(pt).__name__ == ("Qwen3Model" if cfg.arch == "qwen3" else "Gemma3TextModel")
    lin = pt.layers[0].self_attn.q_proj
    assert type(lin).__name__ == {"bitlinear": "BitLinear", "autobitlinear": "AutoBitLinear"}[linear_class]
    assert (lin.rms_norm is not None) == (cfg.norm == "per_linear")
    ids, mask = _batch()
    with torch.no_grad():
        want = pt(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask)).last_hidden_state
    got = np.asarray(model(ids, mask).last_hidden_state)
    real = mask.astype(bool)
    diff = np.abs(got[real] - want.numpy()[real])
    # float-order differences may flip an activation's int8 rounding now and then; the rest agrees to 1e-6
    assert np.median(diff) < 1e-5 and diff.max() < 5e-2, (np.median(diff), diff.max())

    # sentence-transformers: tokenizer (EOS appended), pooling, normalisation and prompts all as ours
    st = SentenceTransformer(out, device="cpu", model_kwargs={"dtype": torch.float32})
    assert st.prompts["query"] == PROMPT
    ours = Encoder.from_pretrained(ckpt)
    for kw, prompt in (({}, None), ({"prompt_name": "query"}, PROMPT)):
        a, b = st.encode(TEXTS, **kw), ours.encode(TEXTS, prompt=prompt)
        assert np.median(np.abs(a - b)) < 1e-5 and np.abs(a - b).max() < 2e-2, np.abs(a - b).max()
        assert (a * b).sum(1).min() > 0.999
    # our JAX loader reads this format too, exactly (the gammas ride in the safetensors metadata)
    np.testing.assert_array_equal(Encoder.from_pretrained(out).encode(TEXTS), ours.encode(TEXTS))


def test_int8_embeddings_and_bf16(ckpts, tmp_path):
    ckpt = ckpts["qwen3"]
    model, _ = load_model_dir(ckpt)
    table = np.asarray(model.embed_tokens.embedding[...])
    out = export(ckpt, str(tmp_path / "i8"), fmt="base3", int8_embeddings=True)
    tensors = load_file(os.path.join(out, "model.safetensors"))
    codes, scale = tensors["embed_tokens.embedding.int8"], tensors["embed_tokens.embedding.row_scale"]
    assert codes.dtype == np.int8 and scale.shape == (table.shape[0],)
    np.testing.assert_allclose(scale, np.abs(table).max(1) / 127, rtol=1e-6, atol=1e-12)  # zero rows: floor
    reloaded, _ = load_export(out)
    np.testing.assert_array_equal(np.asarray(reloaded.embed_tokens.embedding[...]), codes * scale[:, None])
    assert np.abs(codes * scale[:, None] - table).max() <= scale.max() / 2 * 1.0001
    a, b = _embeddings(reloaded), _embeddings(model)
    assert (a * b).sum(-1).min() > 0.99

    f32 = os.path.getsize(os.path.join(export(ckpt, str(tmp_path / "f32"), fmt="base3"), "model.safetensors"))
    bf16_dir = export(ckpt, str(tmp_path / "bf16"), fmt="base3", dtype="bfloat16")
    assert os.path.getsize(os.path.join(bf16_dir, "model.safetensors")) < 0.6 * f32
    assert (_embeddings(load_export(bf16_dir)[0]) * b).sum(-1).min() > 0.99
    # bfloat16 bitnet-2bit: the HF config says so, transformers loads it
    hf_dir = export(ckpt, str(tmp_path / "hfbf16"), fmt="bitnet-2bit", dtype="bfloat16")
    assert json.load(open(os.path.join(hf_dir, "config.json")))["dtype"] == "bfloat16"
    assert str(load_file(os.path.join(hf_dir, "model.safetensors"))["embed_tokens.weight"].dtype) == "bfloat16"


@pytest.mark.parametrize("fmt", ["bitnet-2bit", "base3"])
def test_size_table_matches_the_written_tensors(ckpts, tmp_path, fmt):
    ckpt = ckpts["qwen3"]
    out = export(ckpt, str(tmp_path / "x"), fmt=fmt)
    cfg, meta = read_config(ckpt)
    written = tensor_sizes(load_file(os.path.join(out, "model.safetensors")))
    sizes = export_sizes(abstract_model(cfg), cfg, fmt)  # from shapes only: what bench/export_size.py uses
    assert sizes["components"] == written
    n = sizes["ternary_weights"]
    bits = 8 * written["ternary linears (packed)"] / n
    assert bits == pytest.approx(2.0 if fmt == "bitnet-2bit" else 1.6, abs=1e-3)
    card = open(os.path.join(out, "README.md")).read()
    assert f"Bits per ternary weight: {bits:.3f}" in card and "bf16 original" in card
    assert f"{sizes['total']:,}" in card and PROMPT.split("\n")[0] in card
    assert "| int8 | 68 | 36 | yes |" in card  # bytes per vector at dims 64 and 32 (+4-byte scale)
    assert "| int4 | 36 | 20 | no |" in card


@pytest.mark.parametrize("arch", ["qwen3", "gemma3"])
def test_hf_config_round_trips_through_the_importer(ckpts, arch):
    cfg, _ = read_config(ckpts[arch])
    back = from_hf_config(to_hf_config(cfg, None), mode=cfg.mode, norm=cfg.norm, pooling=cfg.pooling,
                          attention=cfg.attention)
    assert back == cfg


def test_refusals(ckpts, tiny_qwen3, tmp_path):
    with pytest.raises(ValueError, match="subln.*--format base3.*per_linear"):
        export(ckpts["gemma3_subln"], str(tmp_path / "a"), fmt="bitnet-2bit")
    fp = convert(tiny_qwen3, str(tmp_path / "fp"), mode="fp")
    with pytest.raises(ValueError, match="fp .*full-precision"):
        export(fp, str(tmp_path / "b"), fmt="base3")
    four = convert(tiny_qwen3, str(tmp_path / "a4"), mode="bitnet", act_bits=4)
    with pytest.raises(ValueError, match="4-bit activations"):
        export(four, str(tmp_path / "c"), fmt="bitnet-2bit")
    with pytest.raises(ValueError, match="int8-embeddings"):
        export(ckpts["qwen3"], str(tmp_path / "d"), fmt="bitnet-2bit", int8_embeddings=True)
    with pytest.raises(ValueError, match="format"):
        export(ckpts["qwen3"], str(tmp_path / "e"), fmt="gguf")
    with pytest.raises(ValueError, match="ORG/NAME"):
        export(ckpts["qwen3"], str(tmp_path / "f"), fmt="base3", push_to_hub="noslash")
    cfg, _ = read_config(ckpts["qwen3"])
    assert refusal(cfg, "bitnet-2bit") is None and refusal(cfg, "base3", int8_embeddings=True) is None
    assert "one weight_scale per linear" in refusal(cfg.replace(per_row_scale=True), "bitnet-2bit")
    with pytest.raises(ValueError, match="overlaps the input --checkpoint"):
        export(ckpts["qwen3"], os.path.join(ckpts["qwen3"], "inside"), fmt="base3")
    assert not [p for p in os.listdir(tmp_path) if p in "abcdef"]  # nothing half-written

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep").write_text("x")
    with pytest.raises(FileExistsError, match="--overwrite"):
        export(ckpts["qwen3"], str(busy), fmt="base3")
    assert os.listdir(busy) == ["keep"]
    export(ckpts["qwen3"], str(busy), fmt="base3", overwrite=True)
    assert "keep" not in os.listdir(busy) and "model.safetensors" in os.listdir(busy)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporary folders left


def test_tokenizer_appends_eos_after_a_bos(tiny_qwen3, tmp_path):
    """A Gemma-like tokenizer that adds BOS: the export keeps BOS and appends EOS, as our Tokenize does."""
    from transformers import AutoTokenizer

    src = tmp_path / "src"
    src.mkdir()
    for n in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(tiny_qwen3, n), src / n)
    # as Gemma3's tokenizer.json has it: a template that puts BOS in front, no add_*_token flags
    tj = json.loads((src / "tokenizer.json").read_text())
    tj["post_processor"] = {
        "type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<|bos|>", "type_id": 0}},
                                                 {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": "<|bos|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": "<|bos|>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<|bos|>": {"id": "<|bos|>", "ids": [2], "tokens": ["<|bos|>"]}}}
    (src / "tokenizer.json").write_text(json.dumps(tj))
    tok = AutoTokenizer.from_pretrained(str(src))
    plain = tok("alpha beta", add_special_tokens=False)["input_ids"]
    assert tok("alpha beta")["input_ids"] == [tok.bos_token_id] + plain
    dst = tmp_path / "dst"
    dst.mkdir()
    write_tokenizer(str(src), str(dst), append_eos=True, max_length=16)  # checks our Tokenize itself too
    out = AutoTokenizer.from_pretrained(str(dst))
    assert out("alpha beta")["input_ids"] == [tok.bos_token_id] + plain + [tok.eos_token_id]
    assert out.padding_side == "right"


class FakeHub:
    def __init__(self):
        self.calls = []

    def create_repo(self, **kw):
        self.calls.append(("create_repo", kw))

    def upload_folder(self, **kw):
        files = sorted(os.path.relpath(os.path.join(r, n), kw["folder_path"])
                       for r, _, names in os.walk(kw["folder_path"]) for n in names)
        self.calls.append(("upload_folder", kw, files))


def test_push_to_hub_sends_the_folder_and_never_the_token(ckpts, tmp_path, monkeypatch, capsys, caplog):
    secret = "hf_SECRET_token_value_123"
    monkeypatch.setenv("HF_TOKEN", secret)
    hub = FakeHub()
    out = export(ckpts["qwen3"], str(tmp_path / "hf"), fmt="bitnet-2bit", push_to_hub="org/bitnet-embed",
                 hub_client=hub)
    assert hub.calls[0] == ("create_repo", {"repo_id": "org/bitnet-embed", "private": False, "exist_ok": True,
                                            "repo_type": "model"})
    name, kw, files = hub.calls[1]
    assert name == "upload_folder" and kw["folder_path"] == out and kw["repo_id"] == "org/bitnet-embed"
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json", "tokenizer_config.json",
            "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
            "1_Pooling/config.json", "2_Normalize/config.json", "bitembed_config.json"} <= set(files)

    # the CLI path: huggingface_hub's client is replaced by the fake, the token only lives in the env
    import huggingface_hub

    cli_hub = FakeHub()
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda *a, **k: cli_hub)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # the tests run offline
    parser = argparse.ArgumentParser()
    add_export_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["export", "--checkpoint", ckpts["qwen3"], "--out", str(tmp_path / "cli"),
                              "--format", "base3", "--push-to-hub", "org/b3", "--private"])
    args.func(args)
    assert cli_hub.calls[0][1]["private"] is True and cli_hub.calls[1][1]["repo_id"] == "org/b3"

    captured = capsys.readouterr()
    assert "org/b3" in captured.out
    assert secret not in captured.out + captured.err + caplog.text
    for folder in (out, str(tmp_path / "cli")):
        for root, _, names in os.walk(folder):
            for n in names:
                assert secret.encode() not in open(os.path.join(root, n), "rb").read()


@pytest.mark.parametrize("offline, token, named", [
    (True, "hf_SECRET_token_value_123", "--push-to-hub needs the Hugging Face Hub, but HF_HUB_OFFLINE is set"),
    (False, None, "--push-to-hub: no Hugging Face token (set HF_TOKEN or run `hf auth login`)"),
])
def test_push_to_hub_without_the_hub_is_refused_before_packing(ckpts, tmp_path, monkeypatch, capsys, offline, token,
                                                               named):
    import huggingface_hub

    from bitembed_jax.cli import main
    from bitembed_jax.export import hf_export

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: token)
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda *a, **k: pytest.fail("the hub was called"))
    monkeypatch.setattr(hf_export, "load_model_dir", lambda *a, **k: pytest.fail("the export was packed"))
    out = tmp_path / "hf"
    assert main(["export", "--checkpoint", ckpts["qwen3"], "--out", str(out), "--push-to-hub", "org/x"]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"error: {named}\n" and "hf_SECRET" not in captured.out + captured.err
    assert not out.exists() and not list(tmp_path.iterdir())
