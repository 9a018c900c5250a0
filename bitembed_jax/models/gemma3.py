"""Gemma3 text model (HF ``Gemma3TextModel`` semantics) as a BitNet-capable encoder.

RMSNorm is x * (1 + w); embeddings are scaled by sqrt(hidden); each block has
pre- and post- attention/FFN norms; sliding-window and global layers follow the
config's layer types, each with its own RoPE base; the MLP is gelu-tanh GeGLU.
"""
from flax import nnx

from bitembed_jax.layers.norms import RMSNorm
from bitembed_jax.models.blocks import Attention, GatedMLP, gelu_tanh
from bitembed_jax.models.config import ModelConfig
from bitembed_jax.models.encoder import Embedding, Encoder


def _norm(cfg: ModelConfig):
    return RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, offset=True)


class Gemma3Layer(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        scale = (cfg.query_pre_attn_scalar or cfg.head_dim) ** -0.5
        self.input_layernorm = _norm(cfg)
        self.self_attn = Attention(cfg, qk_norm_offset=True, scale=scale, rngs=rngs)
        self.post_attention_layernorm = _norm(cfg)
        self.pre_feedforward_layernorm = _norm(cfg)
        self.mlp = GatedMLP(cfg, activation=gelu_tanh, rngs=rngs)
        self.post_feedforward_layernorm = _norm(cfg)

    def __call__(self, x, cos, sin, mask, return_qkv=False):
        h, qkv = self.self_attn(self.input_layernorm(x), cos, sin, mask, return_qkv)
        x = x + self.post_attention_layernorm(h)
        x = x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))
        return x, qkv


class Gemma3Encoder(Encoder):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed_scale = cfg.hidden_size ** 0.5
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size, rngs)
        self.layers = nnx.List([Gemma3Layer(cfg, rngs) for _ in range(cfg.num_layers)])
        self.norm = _norm(cfg)
