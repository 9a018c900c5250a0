"""Encoder API and the convert / encode commands, as a user runs them."""
import re

import numpy as np
import pytest

from bitembed_jax import Encoder
from bitembed_jax.cli import main

TEXTS = ["sentence number 3 about topic 1", "alpha beta gamma", "delta", "topic 5 with words alpha",
         "words words words", "sentence number 9"]


@pytest.fixture(scope="module")
def encoder_dir(tiny_qwen3, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("enc") / "bitnet")
    assert main(["convert", "--hf", tiny_qwen3, "--out", out, "--bitnet"]) == 0
    return out


def test_encode_unit_vectors_and_batch_invariance(encoder_dir):
    enc = Encoder.from_pretrained(encoder_dir)
    assert enc.cfg.mode == "bitnet" and enc.cfg.norm == "per_linear"
    a = enc.encode(TEXTS, batch_size=4)
    b = enc.encode(TEXTS, batch_size=1)
    assert a.shape == (6, 64) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert not np.allclose(a[0], a[1])


def test_encode_equals_model_forward(encoder_dir):
    """The Encoder's vectors are the pooled last-token (EOS) state of the model."""
    import jax.numpy as jnp

    from bitembed_jax.io.load import load_model_dir
    from bitembed_jax.models import embed

    enc = Encoder.from_pretrained(encoder_dir)
    model, _ = load_model_dir(encoder_dir)
    ids = enc.tokenizer(TEXTS[:2])["input_ids"]
    eos = enc.tokenizer.eos_token_id
    width = max(len(x) for x in ids) + 1
    arr = np.zeros((2, width), np.int32)
    mask = np.zeros((2, width), np.int32)
    for i, x in enumerate(ids):
        arr[i, : len(x) + 1] = x + [eos]
        mask[i, : len(x) + 1] = 1
    want = np.asarray(embed(model, jnp.asarray(arr), jnp.asarray(mask)))
    np.testing.assert_allclose(enc.encode(TEXTS[:2]), want, atol=1e-5)


def test_cli_encode(encoder_dir, tmp_path, capsys):
    inp = tmp_path / "texts.txt"
    inp.write_text("\n".join(TEXTS) + "\n")
    out = tmp_path / "vecs.npy"
    assert main(["encode", "--model", encoder_dir, "--input", str(inp), "--out", str(out)]) == 0
    vecs = np.load(out)
    np.testing.assert_allclose(vecs, Encoder.from_pretrained(encoder_dir).encode(TEXTS), atol=1e-5)
    capsys.readouterr()
    assert main(["encode", "--model", encoder_dir, "--input", str(inp), "--out", str(out)]) == 2
    assert f"error: --out {out} exists; pass --overwrite to replace it" in capsys.readouterr().err


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["convert", "--hf", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert f"error: --hf {tmp_path}/nope: not found; give a Hugging Face model folder" in capsys.readouterr().err


def test_cli_encode_quantized_keeps_scales(encoder_dir, tmp_path):
    from bitembed_jax.quant.storage import StoredEmbeddings, decode_storage, encode_storage

    inp = tmp_path / "texts.txt"
    inp.write_text("\n".join(TEXTS) + "\n")
    out = tmp_path / "vecs.npz"
    assert main(["encode", "--model", encoder_dir, "--input", str(inp), "--out", str(out), "--precision", "int4"]) == 0
    st = StoredEmbeddings.load(str(out))
    want = encode_storage(Encoder.from_pretrained(encoder_dir).encode(TEXTS), "int4")
    np.testing.assert_array_equal(st.codes, want.codes)
    np.testing.assert_allclose(decode_storage(st), decode_storage(want), atol=1e-5)


@pytest.mark.parametrize("out, flags, named", [
    ("vecs.npy", ["--precision", "int8"], "int8 vectors are an .npz archive"),
    ("vecs.npz", [], "float32 vectors are an .npy array; name the file *.npy"),
    ("vecs", ["--precision", "binary"], "name the file *.npz"),
    ("vecs.npy", ["--dim", "32"], "fp32 vectors cut to --dim are an .npz archive"),
])
def test_cli_encode_refuses_an_out_name_numpy_would_change(tmp_path, capsys, out, flags, named):
    inp = tmp_path / "texts.txt"
    inp.write_text("\n".join(TEXTS) + "\n")
    # before any model is read: the folder does not exist
    assert main(["encode", "--model", str(tmp_path / "no-model"), "--input", str(inp), "--out", str(tmp_path / out),
                 *flags]) == 2
    assert re.search(r"^error: --out .*" + re.escape(named), capsys.readouterr().err)
    assert not list(tmp_path.glob("vecs*"))


@pytest.fixture
def no_model_load(monkeypatch):
    """Bad input must be refused before the model's weights are read (let alone a text encoded)."""
    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the bad input was refused")

    monkeypatch.setattr(Encoder, "from_pretrained", refuse)
    monkeypatch.setattr(Encoder, "encode", refuse)


@pytest.mark.parametrize("case, flags, named", [
    ("out folder", ["--out", "{tmp}/missing/vecs.npy"], "--out: folder {tmp}/missing does not exist"),
    ("dim too large", ["--dim", "4096"], "--dim 4096: must be in 1..64 for {model}"),
    ("dim zero", ["--dim", "0"], "--dim 0: must be in 1..64 for {model}"),
    ("dim negative", ["--dim", "-3"], "--dim -3: must be in 1..64 for {model}"),
    ("input folder", ["--input", "{tmp}"], "--input {tmp} is a folder; give a text file with one text per line"),
    ("input missing", ["--input", "{tmp}/nope.txt"], "--input {tmp}/nope.txt not found"),
    ("input empty", ["--input", "{tmp}/empty.txt"], "--input {tmp}/empty.txt has no lines to encode"),
    ("empty line", ["--input", "{tmp}/gap.txt"],
     "--input {tmp}/gap.txt: empty line(s) [2]: one text per line expected"),
    ("input binary", ["--input", "{tmp}/binary.txt"], "--input {tmp}/binary.txt: not UTF-8 text ('utf-8' codec "
                                                      "can't decode byte 0xff in position 0: invalid start byte)"),
    ("batch size", ["--batch-size", "0"], "--batch-size 0: must be at least 1"),
    ("max length", ["--max-length", "0"], "--max-length 0: must be at least 1"),
])
def test_cli_encode_refuses_bad_input_before_loading_the_model(encoder_dir, tmp_path, capsys, no_model_load, case,
                                                               flags, named):
    (tmp_path / "texts.txt").write_text("\n".join(TEXTS) + "\n")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "gap.txt").write_text("alpha\n\nbeta\n")
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00binary")
    flags = [f.format(tmp=tmp_path) for f in flags]
    argv = {"--input": str(tmp_path / "texts.txt"), "--out": str(tmp_path / "vecs.npz")}
    argv.update(dict(zip(flags[::2], flags[1::2])))
    if "--dim" not in argv:
        argv["--out"] = argv["--out"].replace(".npz", ".npy")
    assert main(["encode", "--model", encoder_dir, *[x for kv in argv.items() for x in kv]]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {named.format(tmp=tmp_path, model=encoder_dir)}\n"
    assert not list(tmp_path.rglob("vecs*"))
