"""Attention and gated MLP blocks shared by the Qwen3 and Gemma3 encoders.

Norm refinement (bitnet mode only): ``per_linear`` puts an RMSNorm inside every
BitLinear; ``subln`` adds one on the input of o_proj and of down_proj. Inserted
norms are plain x * w RMSNorms starting at w = 1, as the authors' release does.
"""
import jax
import jax.numpy as jnp
from flax import nnx

from bitembed_jax.layers.bitlinear import BitLinear
from bitembed_jax.layers.norms import RMSNorm
from bitembed_jax.models.attention import apply_rope, gqa_attention
from bitembed_jax.models.config import ModelConfig
from bitembed_jax.parallel.sharding import constrain

QHEADS = ("batch", "length", "heads", "head_dim")
KVHEADS = ("batch", "length", "kv_heads", "head_dim")


def linear(cfg: ModelConfig, din: int, dout: int, axes, rngs, bias: bool = False) -> BitLinear:
    bitnet = cfg.mode == "bitnet"
    return BitLinear(
        din, dout, axes=axes,
        mode="ternary" if bitnet else "fp",
        act_bits=cfg.act_bits,
        per_row_scale=cfg.per_row_scale,
        pre_norm=bitnet and cfg.norm == "per_linear",
        norm_eps=cfg.rms_norm_eps,
        use_bias=bias,
        dtype=cfg.compute_dtype,
        code_matmul=cfg.code_matmul,
        rngs=rngs,
    )


def subln(cfg: ModelConfig, dim: int):
    return RMSNorm(dim, eps=cfg.rms_norm_eps, inserted=True) if cfg.mode == "bitnet" and cfg.norm == "subln" else None


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, qk_norm_offset: bool, scale: float, rngs: nnx.Rngs):
        h, kv, d, e = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size
        b = cfg.attention_bias
        self.q_proj = linear(cfg, e, h * d, ("embed", "heads"), rngs, b)
        self.k_proj = linear(cfg, e, kv * d, ("embed", "kv_heads"), rngs, b)
        self.v_proj = linear(cfg, e, kv * d, ("embed", "kv_heads"), rngs, b)
        self.o_proj = linear(cfg, h * d, e, ("heads", "embed"), rngs, b)
        self.q_norm = RMSNorm(d, eps=cfg.rms_norm_eps, offset=qk_norm_offset, axis_name="head_dim")
        self.k_norm = RMSNorm(d, eps=cfg.rms_norm_eps, offset=qk_norm_offset, axis_name="head_dim")
        self.o_norm = subln(cfg, h * d)
        self.num_heads, self.num_kv_heads, self.head_dim = h, kv, d
        self.scale = scale

    def __call__(self, x, cos, sin, mask, return_qkv: bool = False):
        bsz, t, _ = x.shape
        q = constrain(self.q_norm(self.q_proj(x).reshape(bsz, t, self.num_heads, self.head_dim)), QHEADS)
        k = constrain(self.k_norm(self.k_proj(x).reshape(bsz, t, self.num_kv_heads, self.head_dim)), KVHEADS)
        v = constrain(self.v_proj(x).reshape(bsz, t, self.num_kv_heads, self.head_dim), KVHEADS)
        qkv = None
        if return_qkv:
            rep = self.num_heads // self.num_kv_heads
            qkv = (q, jnp.repeat(k, rep, axis=2), jnp.repeat(v, rep, axis=2))
        out = gqa_attention(apply_rope(q, cos, sin), apply_rope(k, cos, sin), v, mask, self.scale)
        out = out.reshape(bsz, t, self.num_heads * self.head_dim)
        if self.o_norm is not None:
            out = self.o_norm(out)
        return self.o_proj(out), qkv


class GatedMLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, activation, rngs: nnx.Rngs):
        e, m = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = linear(cfg, e, m, ("embed", "mlp"), rngs)
        self.up_proj = linear(cfg, e, m, ("embed", "mlp"), rngs)
        self.down_proj = linear(cfg, m, e, ("mlp", "embed"), rngs)
        self.down_norm = subln(cfg, m)
        self.activation = activation

    def __call__(self, x):
        h = constrain(self.activation(self.gate_proj(x)) * self.up_proj(x), ("batch", "length", "mlp"))
        if self.down_norm is not None:
            h = self.down_norm(h)
        return self.down_proj(h)


def silu(x):
    return jax.nn.silu(x.astype(jnp.float32)).astype(x.dtype)


def gelu_tanh(x):
    return jax.nn.gelu(x.astype(jnp.float32), approximate=True).astype(x.dtype)
