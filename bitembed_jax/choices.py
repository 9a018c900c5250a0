"""Every closed set of options in one place (no jax import: the CLI's parser and config checks read it).

argparse choices, ``ModelConfig``'s checks, the training config checks and the error messages all use these.
"""
ARCHS = ("qwen3", "gemma3")
MODES = ("fp", "bitnet")
NORMS = ("per_linear", "subln", "none")
ATTENTION = ("causal", "bidirectional")
POOLING = ("last", "mean")
ACT_BITS = (8, 4)
ROPE_TYPES = ("default", "linear")
DTYPES = ("float32", "bfloat16")
# the operand type of the forward integer-code matmul (quant/bitmatmul.py); both are exact
CODE_MATMULS = ("bfloat16", "int8")
# platforms whose matrix units multiply int8 faster than bfloat16 (TPU v5e/v6e MXU, GPU tensor cores)
INT8_PLATFORMS = ("tpu", "gpu", "cuda", "rocm")
# what config.init may ask of an encoder (validated before a model exists)
INIT_CHOICES = {"mode": MODES, "norm": NORMS, "act_bits": ACT_BITS, "attention": ATTENTION, "pooling": POOLING}

# output embedding precisions, from widest to narrowest
PRECISIONS = ("fp32", "int8", "int4", "int2", "binary")
# what `bitembed-jax index` stores in an engine (bitembed_jax.index.coding)
INDEX_PRECISIONS = ("fp32", "fp32-calibrated", "int8", "int4", "int2", "binary")
# per-dimension calibration of the int/binary codes (quant.calibration), and where eval takes it from
CALIBRATION_METHODS = ("standardize", "range")
CALIBRATION_SOURCES = ("model", "none", "corpus")
EXPORT_FORMATS = ("bitnet-2bit", "base3", "onnx")
LINEAR_CLASSES = ("bitlinear", "autobitlinear")
TRAINING_STAGES = ("pretrain", "finetune")

# tokens per text when a model folder does not say (encode, eval, export's sentence-transformers config)
DEFAULT_MAX_LENGTH = 512
