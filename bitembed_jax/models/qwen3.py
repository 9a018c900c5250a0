"""Qwen3 text model (HF ``Qwen3Model`` semantics) as a BitNet-capable encoder."""
from flax import nnx

from bitembed_jax.layers.norms import RMSNorm
from bitembed_jax.models.blocks import Attention, GatedMLP, silu
from bitembed_jax.models.config import ModelConfig
from bitembed_jax.models.encoder import Embedding, Encoder


class Qwen3Layer(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, qk_norm_offset=False, scale=cfg.head_dim ** -0.5, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.mlp = GatedMLP(cfg, activation=silu, rngs=rngs)

    def __call__(self, x, cos, sin, mask, return_qkv=False):
        h, qkv = self.self_attn(self.input_layernorm(x), cos, sin, mask, return_qkv)
        x = x + h
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, qkv


class Qwen3Encoder(Encoder):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size, rngs)
        self.layers = nnx.List([Qwen3Layer(cfg, rngs) for _ in range(cfg.num_layers)])
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
