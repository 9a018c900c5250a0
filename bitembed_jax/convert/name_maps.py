"""One declarative Hugging Face name map per architecture.

Each entry: (HF tensor name pattern, our NNX state path pattern, transform).
``{i}`` is the layer index. Transforms are small hooks applied to the numpy
tensor: HF linears are (out, in), our kernels (in, out). Both hooks are their own inverse, so export
applies the same ones.
"""
import numpy as np

LINEAR = "transpose"
COPY = "copy"

TRANSFORMS = {
    COPY: lambda t: t,
    LINEAR: lambda t: np.ascontiguousarray(t.T),
}

_ATTN = [
    ("layers.{i}.self_attn.q_proj.weight", "layers.{i}.self_attn.q_proj.kernel", LINEAR),
    ("layers.{i}.self_attn.k_proj.weight", "layers.{i}.self_attn.k_proj.kernel", LINEAR),
    ("layers.{i}.self_attn.v_proj.weight", "layers.{i}.self_attn.v_proj.kernel", LINEAR),
    ("layers.{i}.self_attn.o_proj.weight", "layers.{i}.self_attn.o_proj.kernel", LINEAR),
    ("layers.{i}.self_attn.q_norm.weight", "layers.{i}.self_attn.q_norm.weight", COPY),
    ("layers.{i}.self_attn.k_norm.weight", "layers.{i}.self_attn.k_norm.weight", COPY),
    ("layers.{i}.mlp.gate_proj.weight", "layers.{i}.mlp.gate_proj.kernel", LINEAR),
    ("layers.{i}.mlp.up_proj.weight", "layers.{i}.mlp.up_proj.kernel", LINEAR),
    ("layers.{i}.mlp.down_proj.weight", "layers.{i}.mlp.down_proj.kernel", LINEAR),
    ("layers.{i}.input_layernorm.weight", "layers.{i}.input_layernorm.weight", COPY),
    ("layers.{i}.post_attention_layernorm.weight", "layers.{i}.post_attention_layernorm.weight", COPY),
]
_ATTN_BIAS = [
    (f"layers.{{i}}.self_attn.{p}_proj.bias", f"layers.{{i}}.self_attn.{p}_proj.bias", COPY) for p in "qkvo"
]

NAME_MAPS = {
    "qwen3": {
        "global": [
            ("embed_tokens.weight", "embed_tokens.embedding", COPY),
            ("norm.weight", "norm.weight", COPY),
        ],
        "layer": _ATTN,
    },
    "gemma3": {
        "global": [
            ("embed_tokens.weight", "embed_tokens.embedding", COPY),
            ("norm.weight", "norm.weight", COPY),
        ],
        "layer": _ATTN + [
            ("layers.{i}.pre_feedforward_layernorm.weight", "layers.{i}.pre_feedforward_layernorm.weight", COPY),
            ("layers.{i}.post_feedforward_layernorm.weight", "layers.{i}.post_feedforward_layernorm.weight", COPY),
        ],
    },
}

# prefixes HF checkpoints put in front of the base model's names (ForCausalLM, Embedding wrappers)
PREFIXES = ("model.language_model.", "language_model.model.", "model.", "")
# tensors an encoder does not use: LM heads and stale rotary buffers
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
IGNORED_NAMES = ("lm_head.weight",)


def expand(arch: str, num_layers: int, attention_bias: bool = False):
    """[(hf_name, our_path, transform)] for a model with ``num_layers`` layers."""
    spec = NAME_MAPS[arch]
    layer = spec["layer"] + (_ATTN_BIAS if attention_bias else [])
    out = list(spec["global"])
    for i in range(num_layers):
        out += [(h.format(i=i), o.format(i=i), t) for h, o, t in layer]
    return out
