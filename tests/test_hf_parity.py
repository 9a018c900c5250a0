"""fp-mode import matches transformers' PyTorch forward on the same checkpoint (fp32)."""
import numpy as np
import pytest
import torch

from bitembed_jax.convert.hf_import import import_hf
from tests.hf_fixtures import load_hf

SEQ = 12


def _batch(seed=0, vocab=512):
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, vocab, size=(3, SEQ)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 8:] = 0  # right padding
    mask[2, :5] = 0  # left padding
    ids[mask == 0] = 0
    return ids, mask


@pytest.mark.parametrize("arch", ["qwen3", "gemma3"])
def test_fp_forward_matches_transformers(arch, tiny_qwen3, tiny_gemma3):
    path = tiny_qwen3 if arch == "qwen3" else tiny_gemma3
    ids, mask = _batch()
    with torch.no_grad():
        ref = load_hf(path)(input_ids=torch.tensor(ids, dtype=torch.long),
                            attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    model, cfg = import_hf(path, mode="fp")
    ours = np.asarray(model(ids, mask).last_hidden_state)
    real = mask.astype(bool)
    diff = np.abs(ours[real] - ref[real]).max()
    assert diff <= 1e-4, diff
    assert cfg.arch == arch


def test_gemma3_sliding_window_matters(tiny_gemma3):
    """The test sequence is longer than the window, so local and global layers really differ."""
    ids, mask = _batch()
    model, cfg = import_hf(tiny_gemma3, mode="fp")
    assert cfg.sliding_window < SEQ and "sliding_attention" in cfg.layer_types
    wide, _ = import_hf(tiny_gemma3, mode="fp", sliding_window=SEQ + 1)
    a = np.asarray(model(ids, mask).last_hidden_state)
    b = np.asarray(wide(ids, mask).last_hidden_state)
    assert np.abs(a - b).max() > 1e-3
