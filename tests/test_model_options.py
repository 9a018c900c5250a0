"""Encoder options: remat, bf16 compute, bidirectional attention (checked against transformers), mean pooling."""
import jax
import jax.numpy as jnp
import numpy as np
import torch

from bitembed_jax.convert.hf_import import import_hf
from bitembed_jax.models import embed
from tests.hf_fixtures import load_hf, make_tiny_hf
from tests.test_hf_parity import _batch


def test_remat_gives_identical_gradients(tiny_qwen3):
    ids, mask = _batch()
    grads = []
    for remat in (False, True):
        model, _ = import_hf(tiny_qwen3, mode="bitnet", remat=remat)
        from flax import nnx
        g, state = nnx.split(model)

        def f(s):
            return jnp.sum(embed(nnx.merge(g, s), ids, mask) ** 3)

        grads.append(jax.tree.leaves(jax.grad(f)(state)))
    for a, b in zip(*grads):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_bf16_compute_close_to_fp32(tiny_gemma3):
    ids, mask = _batch()
    e32 = embed(import_hf(tiny_gemma3, mode="fp")[0], ids, mask)
    m16, cfg = import_hf(tiny_gemma3, mode="fp", dtype="bfloat16")
    e16 = embed(m16, ids, mask)
    assert cfg.compute_dtype == jnp.bfloat16 and e16.dtype == jnp.float32
    assert float(jnp.min(jnp.sum(e32 * e16, axis=-1))) > 0.99  # cosine


def test_gemma3_bidirectional_matches_transformers(tmp_path):
    path = make_tiny_hf("gemma3", str(tmp_path / "bidir"))
    import json
    cfg = json.loads((tmp_path / "bidir" / "config.json").read_text())
    cfg["use_bidirectional_attention"] = True
    (tmp_path / "bidir" / "config.json").write_text(json.dumps(cfg))
    ids, mask = _batch()
    with torch.no_grad():
        ref = load_hf(path)(input_ids=torch.tensor(ids, dtype=torch.long),
                            attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    model, mcfg = import_hf(path, mode="fp")
    assert mcfg.attention == "bidirectional"
    ours = np.asarray(model(ids, mask).last_hidden_state)
    real = mask.astype(bool)
    assert np.abs(ours[real] - ref[real]).max() <= 1e-4
    causal, _ = import_hf(path, mode="fp", attention="causal")
    assert np.abs(np.asarray(causal(ids, mask).last_hidden_state)[real] - ours[real]).max() > 1e-3


def test_mean_pooling_ignores_padding(tiny_qwen3):
    model, _ = import_hf(tiny_qwen3, mode="fp", pooling="mean", attention="bidirectional")
    ids, mask = _batch()
    a = embed(model, ids, mask)
    ids2 = np.where(mask == 0, 7, ids)  # different tokens under the padding
    np.testing.assert_allclose(np.asarray(embed(model, ids2, mask)), np.asarray(a), atol=1e-6)
