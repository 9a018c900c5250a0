"""A small byte-level BPE tokenizer trained offline on the shipped sample pairs (tests and tiny checkpoints)."""
from bitembed_jax.testing import tiny_hf

VOCAB_SIZE = 1000


def make_tokenizer(out_dir: str):
    """Train on data/sample/pairs.jsonl and save_pretrained to ``out_dir``; eos "<|endoftext|>", pad "<|pad|>".

    ``AutoTokenizer.from_pretrained(out_dir)`` then works offline. The tokenizer adds no special
    tokens itself (like Qwen3's), so the pipeline appends EOS.
    """
    return tiny_hf.train_tokenizer(tiny_hf.sample_texts(), out_dir, vocab_size=VOCAB_SIZE)
