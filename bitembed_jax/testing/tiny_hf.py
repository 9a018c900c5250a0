"""Make a tiny random Hugging Face Qwen3/Gemma3 checkpoint + a BPE tokenizer trained on local text.

The quickstart and the tests use it where a user would download Qwen3-0.6B or
Gemma3-270M: same architectures and file layout, a few hundred thousand weights.
"""
import json
import os

EOS, PAD, BOS = "<|endoftext|>", "<|pad|>", "<|bos|>"
# special token ids are fixed so configs can name them
PAD_ID, EOS_ID, BOS_ID = 0, 1, 2


def train_tokenizer(texts, out_dir: str, vocab_size: int = 512):
    """Byte-level BPE with pad/eos/bos specials, saved so AutoTokenizer.from_pretrained(out_dir) works offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, EOS, BOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD, bos_token=BOS)
    fast.save_pretrained(out_dir)
    return fast


def sample_texts():
    path = os.path.join(os.path.dirname(__file__), "..", "data", "sample", "pairs.jsonl")
    texts = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            texts += [rec["query"], rec["positive"], *rec.get("negatives", [])]
    return texts


def hf_config(arch: str, vocab_size: int = 512, **kw):
    common = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                  eos_token_id=EOS_ID, pad_token_id=PAD_ID, bos_token_id=BOS_ID)
    common.update(kw)
    if arch == "qwen3":
        from transformers import Qwen3Config
        return Qwen3Config(**{"num_hidden_layers": 3, "rope_theta": 10000.0, "tie_word_embeddings": True, **common})
    if arch == "gemma3":
        from transformers import Gemma3TextConfig
        return Gemma3TextConfig(**{"num_hidden_layers": 4, "sliding_window": 4, "query_pre_attn_scalar": 16,
                                   "layer_types": ["sliding_attention", "sliding_attention", "full_attention",
                                                   "sliding_attention"], **common})
    raise ValueError(f"arch must be qwen3 or gemma3, got {arch!r}")


def make_tiny_hf(arch: str, out_dir: str, *, seed: int = 0, texts=None, vocab_size: int = 512,
                 perturb_norms: bool = False, **config_kw):
    """Random weights saved with save_pretrained, plus a tokenizer trained on ``texts`` (default: the sample data)."""
    import torch
    from transformers import AutoModelForCausalLM, Gemma3TextModel

    torch.manual_seed(seed)
    cfg = hf_config(arch, vocab_size, **config_kw)
    model = AutoModelForCausalLM.from_config(cfg) if arch == "qwen3" else Gemma3TextModel(cfg)
    if perturb_norms:  # tests: non-trivial norm weights exercise offsets and scales
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "norm" in name:
                    p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(out_dir)
    train_tokenizer(texts if texts is not None else sample_texts(), out_dir, vocab_size)
    return out_dir
