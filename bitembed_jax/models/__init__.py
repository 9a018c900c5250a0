"""Backbones used as encoders."""
from flax import nnx

from bitembed_jax.models.config import ModelConfig
from bitembed_jax.models.encoder import EncoderOutput
from bitembed_jax.models.pooling import pool


def build_model(cfg: ModelConfig, seed: int = 0):
    """Create a randomly initialised model (unsharded; see parallel.sharding for placement)."""
    from bitembed_jax.models.gemma3 import Gemma3Encoder
    from bitembed_jax.models.qwen3 import Qwen3Encoder

    cls = {"qwen3": Qwen3Encoder, "gemma3": Gemma3Encoder}[cfg.arch]
    with nnx.use_eager_sharding(False):
        return cls(cfg, nnx.Rngs(seed))


def embed(model, input_ids, attention_mask):
    """L2-normalised pooled embeddings (B, hidden) in float32."""
    out = model(input_ids, attention_mask)
    return pool(out.last_hidden_state, attention_mask, model.cfg.pooling)


__all__ = ["ModelConfig", "EncoderOutput", "build_model", "embed", "pool"]
