"""Model configuration: architecture (read from a Hugging Face config) + our encoder/quantization choices."""
import dataclasses
import json
from typing import Optional

import jax.numpy as jnp

from bitembed_jax.choices import (ACT_BITS, ARCHS, ATTENTION, CODE_MATMULS, DTYPES, MODES, NORMS, POOLING,
                                  ROPE_TYPES)


# how a model runs, not what it is: folders that differ only in these hold the same kind of model
RUNTIME_FIELDS = ("dtype", "remat", "code_matmul")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    arch: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    rope_type: str = "default"
    rope_factor: float = 1.0
    rope_local_theta: float = 10_000.0  # gemma3 sliding layers
    layer_types: tuple = ()  # "full_attention" | "sliding_attention" per layer
    sliding_window: Optional[int] = None  # HF runtime value (already adjusted for bidirectional Gemma3)
    query_pre_attn_scalar: Optional[float] = None  # gemma3: scaling = scalar**-0.5
    attention_bias: bool = False
    pad_token_id: Optional[int] = None
    eos_token_id: Optional[int] = None
    # encoder and BitNet choices
    mode: str = "fp"
    norm: str = "per_linear"
    act_bits: int = 8
    per_row_scale: bool = False
    attention: str = "causal"
    pooling: str = "last"
    dtype: str = "float32"
    remat: bool = False
    code_matmul: str = "bfloat16"  # runtime choice of the devices (train.build.for_platform), not of the model

    def __post_init__(self):
        checks = [("arch", ARCHS), ("mode", MODES), ("norm", NORMS), ("attention", ATTENTION),
                  ("pooling", POOLING), ("rope_type", ROPE_TYPES), ("dtype", DTYPES),
                  ("code_matmul", CODE_MATMULS)]
        for key, allowed in checks:
            if getattr(self, key) not in allowed:
                raise ValueError(f"model.{key}={getattr(self, key)!r} is not one of {allowed}")
        if self.act_bits not in ACT_BITS:
            raise ValueError(f"model.act_bits={self.act_bits} must be one of {ACT_BITS}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"model.num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        if len(self.layer_types) not in (0, self.num_layers):
            raise ValueError(f"model.layer_types has {len(self.layer_types)} entries for {self.num_layers} layers")
        object.__setattr__(self, "layer_types", tuple(self.layer_types))

    @property
    def compute_dtype(self):
        return jnp.bfloat16 if self.dtype == "bfloat16" else jnp.float32

    def layer_type(self, i: int) -> str:
        return self.layer_types[i] if self.layer_types else "full_attention"

    def replace(self, **kw) -> "ModelConfig":
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["layer_types"] = list(self.layer_types)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}")
        return cls(**d)

    def to_json(self, path):
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, path) -> "ModelConfig":
        with open(path) as f:
            return cls.from_dict(json.load(f))
