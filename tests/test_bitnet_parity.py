"""bitnet-mode forward equals an independent PyTorch reference of the same quantized forward.

The reference swaps every linear of the HF PyTorch model for a straight
transcription of the formulas (RMSNorm, absmax int8 per token, absmean ternary),
with the norm-refinement weights copied from our model after randomising them.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from bitembed_jax.convert.hf_import import import_hf
from tests.hf_fixtures import load_hf
from tests.test_hf_parity import _batch

PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class RefBitLinear(torch.nn.Module):
    def __init__(self, linear, norm_weight, eps, bits):
        super().__init__()
        self.w = linear.weight.detach()
        self.norm_weight = None if norm_weight is None else torch.tensor(np.asarray(norm_weight))
        self.eps, self.qb = eps, 2 ** (bits - 1) - 1

    def forward(self, x):
        if self.norm_weight is not None:
            x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.norm_weight
        s = self.qb / x.abs().amax(-1, keepdim=True).clamp(min=1e-5)
        xq = (x * s).round().clamp(-self.qb - 1, self.qb) / s
        gamma = self.w.abs().mean() + 1e-5
        wq = (self.w / gamma).round().clamp(-1, 1) * gamma
        return xq @ wq.T


def _randomise_inserted_norms(model):
    """Inserted norms start at 1; make them random so the test sees whether they are applied."""
    key = jax.random.key(1)
    for path, var in nnx.iter_graph(model):
        if isinstance(var, nnx.Param) and path and path[-1] == "weight" and (
                "norm" in path[-2] and path[-2] in ("norm", "o_norm", "down_norm") and len(path) > 3):
            key, sub = jax.random.split(key)
            var.set_value(1.0 + 0.2 * jax.random.normal(sub, var.shape))


def _norm_weight(model, layer, proj, norm):
    block = model.layers[layer].self_attn if proj in PROJ[:4] else model.layers[layer].mlp
    lin = getattr(block, proj)
    if norm == "per_linear":
        return lin.norm.weight[...]
    if norm == "subln" and proj == "o_proj":
        return block.o_norm.weight[...]
    if norm == "subln" and proj == "down_proj":
        return block.down_norm.weight[...]
    return None


CASES = [(a, n, 8) for a in ("qwen3", "gemma3") for n in ("per_linear", "subln", "none")]
CASES += [("qwen3", "per_linear", 4), ("gemma3", "per_linear", 4)]


@pytest.mark.parametrize("arch,norm,bits", CASES)
def test_bitnet_forward_matches_reference(arch, norm, bits, tiny_qwen3, tiny_gemma3):
    path = tiny_qwen3 if arch == "qwen3" else tiny_gemma3
    model, cfg = import_hf(path, mode="bitnet", norm=norm, act_bits=bits)
    _randomise_inserted_norms(model)
    ref = load_hf(path)
    for i, layer in enumerate(ref.layers):
        for proj in PROJ:
            block = layer.self_attn if proj in PROJ[:4] else layer.mlp
            setattr(block, proj, RefBitLinear(getattr(block, proj), _norm_weight(model, i, proj, norm),
                                              cfg.rms_norm_eps, bits))
    ids, mask = _batch()
    with torch.no_grad():
        want = ref(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask)).last_hidden_state
    got = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)).last_hidden_state)
    real = mask.astype(bool)
    diff = np.abs(got[real] - want.numpy()[real])
    # a float-order difference can flip one activation's rounding; that moves an element by ~1/127 of its token
    assert np.median(diff) < 1e-5 and diff.max() < 5e-3, (np.median(diff), diff.max())
