"""Architecture configs of the paper's backbones, so AOT compilation needs no downloaded folder.

Values are those of the public ``config.json`` files of the Hugging Face models.
"""
PRESETS = {
    "Qwen/Qwen3-0.6B": {
        "model_type": "qwen3", "vocab_size": 151936, "hidden_size": 1024, "intermediate_size": 3072,
        "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "hidden_act": "silu", "eos_token_id": 151645,
        "attention_bias": False, "use_sliding_window": False,
    },
    "google/gemma-3-270m": {
        "model_type": "gemma3_text", "vocab_size": 262144, "hidden_size": 640, "intermediate_size": 2048,
        "num_hidden_layers": 18, "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
        "query_pre_attn_scalar": 256, "sliding_window": 512, "hidden_activation": "gelu_pytorch_tanh",
        "eos_token_id": 1, "pad_token_id": 0,
        "layer_types": ["sliding_attention"] * 5 + ["full_attention"] + ["sliding_attention"] * 5
        + ["full_attention"] + ["sliding_attention"] * 5 + ["full_attention"],
    },
}
