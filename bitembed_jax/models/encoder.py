"""The encoder skeleton both backbones share: embeddings, layer stack, final norm, masks, RoPE tables."""
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from flax import nnx

from bitembed_jax.models.attention import attention_mask, rope_cos_sin
from bitembed_jax.models.config import ModelConfig
from bitembed_jax.parallel.sharding import constrain

HIDDEN = ("batch", "length", "activation_embed")


class EncoderOutput(NamedTuple):
    last_hidden_state: jax.Array  # (B, T, hidden)
    qkv: Optional[tuple]  # (q, k, v) each (B, T, heads, head_dim) of the requested layer, else None
    hidden_states: Optional[tuple] = None  # every layer's output (B, T, hidden) when asked for, else None


class Embedding(nnx.Module):
    def __init__(self, vocab: int, dim: int, rngs: nnx.Rngs):
        init = nnx.initializers.normal(0.02)
        self.embedding = nnx.Param(init(rngs.params(), (vocab, dim), jnp.float32), out_sharding=("vocab", "embed"))

    def __call__(self, ids):
        return constrain(jnp.take(self.embedding[...], ids, axis=0), ("lookup_batch", "length", "embed"))


class Encoder(nnx.Module):
    """Subclasses set ``self.embed_tokens``, ``self.layers`` (nnx.List), ``self.norm`` and ``embed_scale``."""

    cfg: ModelConfig
    embed_scale: Optional[float] = None

    def _rope_tables(self, t: int, bsz: int):
        cfg = self.cfg
        pos = jnp.broadcast_to(jnp.arange(t), (bsz, t))
        tables = {"full_attention": rope_cos_sin(pos, cfg.head_dim, cfg.rope_theta, cfg.rope_factor)}
        if "sliding_attention" in cfg.layer_types:
            tables["sliding_attention"] = rope_cos_sin(pos, cfg.head_dim, cfg.rope_local_theta)
        return tables

    def __call__(self, input_ids, attention_mask_: jax.Array, *, qkv_layer: Optional[int] = None,
                 hidden_states: bool = False) -> EncoderOutput:
        cfg = self.cfg
        bsz, t = input_ids.shape
        x = self.embed_tokens(input_ids)
        if self.embed_scale is not None:
            # HF casts the scale to the embedding dtype before multiplying
            x = x * jnp.asarray(self.embed_scale, x.dtype)
        x = constrain(x.astype(cfg.compute_dtype), HIDDEN)
        causal = cfg.attention == "causal"
        masks = {"full_attention": attention_mask(attention_mask_, causal=causal)}
        if "sliding_attention" in cfg.layer_types:
            masks["sliding_attention"] = attention_mask(attention_mask_, causal=causal, window=cfg.sliding_window)
        ropes = self._rope_tables(t, bsz)
        if qkv_layer is not None and qkv_layer < 0:
            qkv_layer += cfg.num_layers
        qkv, hidden = None, []
        for i, layer in enumerate(self.layers):
            kind = cfg.layer_type(i)
            cos, sin = ropes[kind]
            want = i == qkv_layer
            if cfg.remat:
                call = nnx.remat(lambda blk, *a: blk(*a), static_argnums=(5,))
                x, out_qkv = call(layer, x, cos, sin, masks[kind], want)
            else:
                x, out_qkv = layer(x, cos, sin, masks[kind], want)
            x = constrain(x, HIDDEN)
            if want:
                qkv = out_qkv
            if hidden_states:
                hidden.append(x)
        return EncoderOutput(self.norm(x), qkv, tuple(hidden) if hidden_states else None)
