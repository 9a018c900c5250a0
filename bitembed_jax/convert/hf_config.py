"""Our ``ModelConfig`` and a Hugging Face ``config.json``, both directions in one place: ``from_hf_config``
(import: a Qwen3 / Gemma3 text config -> ModelConfig) and ``to_hf_config`` (export: the architecture's config
regenerated from a ModelConfig). ``to_hf_config`` then ``from_hf_config`` gives the config back.
"""
from bitembed_jax.models import ModelConfig

SUPPORTED = {"qwen3": "qwen3", "gemma3_text": "gemma3"}


class CheckpointImportError(ValueError):
    """A checkpoint that cannot be imported; the message names the culprit."""


def _rope(hf: dict, layer_type: str):
    params = hf.get("rope_parameters") or {}
    if layer_type in params:  # Gemma3: one entry per layer type
        params = params[layer_type]
    legacy = hf.get("rope_scaling") or {}
    theta = params.get("rope_theta", hf.get("rope_theta"))
    rtype = params.get("rope_type", legacy.get("rope_type", "default"))
    factor = params.get("factor", legacy.get("factor", 1.0))
    if rtype not in ("default", "linear"):
        raise CheckpointImportError(f"rope_type {rtype!r} ({layer_type}) is not supported; supported: default, linear")
    return theta, rtype, float(factor)


def from_hf_config(hf: dict, config_path: str = "config.json", **encoder_opts) -> ModelConfig:
    mtype = hf.get("model_type")
    if mtype not in SUPPORTED:
        raise CheckpointImportError(f"{config_path}: model_type {mtype!r} is not supported; "
                                    f"supported model types: {', '.join(sorted(SUPPORTED))}")
    arch = SUPPORTED[mtype]
    n = hf["num_hidden_layers"]
    theta, rtype, factor = _rope(hf, "full_attention")
    layer_types = tuple(hf.get("layer_types") or ["full_attention"] * n)
    eos = hf.get("eos_token_id")
    common = dict(
        arch=arch, vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"], num_layers=n, num_heads=hf["num_attention_heads"],
        num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        head_dim=hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"],
        rms_norm_eps=hf.get("rms_norm_eps", 1e-6), rope_theta=theta or 1_000_000.0, rope_type=rtype,
        rope_factor=factor, layer_types=layer_types, attention_bias=bool(hf.get("attention_bias", False)),
        pad_token_id=hf.get("pad_token_id"), eos_token_id=eos[0] if isinstance(eos, list) else eos,
    )
    if arch == "qwen3":
        act = hf.get("hidden_act", "silu")
        if act != "silu":
            raise CheckpointImportError(f"{config_path}: hidden_act {act!r} is not supported for qwen3 (expects silu)")
        window = hf.get("sliding_window") if hf.get("use_sliding_window") else None
        extra = dict(rope_local_theta=common["rope_theta"], sliding_window=window)
    else:
        act = hf.get("hidden_activation") or hf.get("hidden_act")
        if act not in ("gelu_pytorch_tanh", None):
            raise CheckpointImportError(f"{config_path}: hidden_activation {act!r} is not supported for gemma3")
        local_theta, _, _ = _rope(hf, "sliding_attention")
        window = hf.get("sliding_window")
        bidir = bool(hf.get("use_bidirectional_attention"))
        if bidir:
            window = _runtime_window(window)
            encoder_opts.setdefault("attention", "bidirectional")
        extra = dict(rope_local_theta=local_theta or hf.get("rope_local_base_freq", 10_000.0),
                     sliding_window=window, query_pre_attn_scalar=hf.get("query_pre_attn_scalar"))
        if hf.get("attn_logit_softcapping"):
            raise CheckpointImportError(f"{config_path}: attn_logit_softcapping is not supported")
    return ModelConfig(**{**common, **extra, **encoder_opts})


# A bidirectional Gemma3 config on disk holds the causal sliding window w; transformers attends w // 2 + 1
# tokens to each side, which is what ModelConfig.sliding_window records. These two keep the directions paired.
def _runtime_window(disk_window: int) -> int:
    return disk_window // 2 + 1


def _disk_window(runtime_window: int) -> int:
    return (runtime_window - 1) * 2


def to_hf_config(cfg, quantization_config: dict | None, dtype: str = "float32") -> dict:
    """The architecture's HF config.json regenerated from our ModelConfig."""
    rope = {"rope_type": cfg.rope_type, "rope_theta": cfg.rope_theta}
    if cfg.rope_type == "linear":
        rope["factor"] = cfg.rope_factor
    if cfg.arch == "qwen3":
        from transformers import Qwen3Config as Config
        extra = dict(rope_parameters=rope, tie_word_embeddings=True, use_sliding_window=cfg.sliding_window is not None,
                     sliding_window=cfg.sliding_window, layer_types=list(cfg.layer_types) or None,
                     architectures=["Qwen3Model"])
    else:
        from transformers import Gemma3TextConfig as Config
        bidir = cfg.attention == "bidirectional"
        extra = dict(layer_types=list(cfg.layer_types) or None, query_pre_attn_scalar=cfg.query_pre_attn_scalar,
                     sliding_window=_disk_window(cfg.sliding_window) if bidir else cfg.sliding_window,
                     use_bidirectional_attention=bidir, architectures=["Gemma3TextModel"],
                     rope_parameters={"full_attention": rope,
                                      "sliding_attention": {"rope_type": "default",
                                                            "rope_theta": cfg.rope_local_theta}})
    c = Config(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
               num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
               num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, rms_norm_eps=cfg.rms_norm_eps,
               attention_bias=cfg.attention_bias, pad_token_id=cfg.pad_token_id, eos_token_id=cfg.eos_token_id,
               **extra)
    d = c.to_dict()
    d["dtype"] = dtype
    if quantization_config is not None:
        d["quantization_config"] = quantization_config
    return d
