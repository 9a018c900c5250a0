"""The tokenizer wrapper that training and encoding share: texts -> fixed-shape ids and masks.

Kept apart from the input pipeline so that encoding a sentence does not import grain or tensorflow-datasets.
"""
from typing import Sequence

import numpy as np

# how a query meets its instruction, in training and at encoding time alike
DEFAULT_QUERY_TEMPLATE = "Instruct: {instruction}\nQuery: {query}"


class Tokenize:
    """Texts -> right-padded int32 ids and masks of a fixed length (static shapes for jit).

    With ``add_eos`` every sequence ends in EOS (last-token pooling reads it): it is appended unless
    the tokenizer already adds it, and truncation keeps room for it.
    """

    def __init__(self, tokenizer, *, add_eos: bool = True):
        self.tokenizer = tokenizer
        self.add_eos = add_eos
        if add_eos and tokenizer.eos_token_id is None:
            raise ValueError("add_eos=True but the tokenizer has no eos_token; set one or pass add_eos=False")
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # masked out anyway
        probe = tokenizer("a", add_special_tokens=True)["input_ids"]
        self.tokenizer_adds_eos = bool(probe) and probe[-1] == self.eos_id

    def __call__(self, texts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
        # no truncation=... here: it mutates the shared Rust tokenizer, which fails under grain's threads
        encoded = self.tokenizer(list(texts), add_special_tokens=True)["input_ids"]
        ids = np.full((len(texts), max_len), self.pad_id, np.int32)
        mask = np.zeros((len(texts), max_len), np.int32)
        for row, seq in enumerate(encoded):
            if self.add_eos:
                if self.tokenizer_adds_eos:
                    seq = seq[:-1]
                seq = list(seq[:max_len - 1]) + [self.eos_id]
            else:
                seq = seq[:max_len]
            ids[row, :len(seq)] = seq
            mask[row, :len(seq)] = 1
        return ids, mask


class PairArrays:
    """Rows of {"query", "positive", "negatives"?} -> the batch dict of int32 arrays training reads (the
    prepared and the streaming pipelines share it, so both give the same shapes and query format)."""

    def __init__(self, tokenizer, *, max_query_len: int, max_passage_len: int, num_negatives: int = 0,
                 instruction: str | None = None, query_template: str = DEFAULT_QUERY_TEMPLATE, add_eos: bool = True):
        self.tokenize = Tokenize(tokenizer, add_eos=add_eos)
        self.max_query_len, self.max_passage_len, self.num_negatives = max_query_len, max_passage_len, num_negatives
        self.instruction, self.query_template = instruction, query_template

    def format_query(self, query: str) -> str:
        if self.instruction is None:
            return query
        return self.query_template.format(instruction=self.instruction, query=query)

    def __call__(self, rows: list[dict]) -> dict[str, np.ndarray]:
        q_ids, q_mask = self.tokenize([self.format_query(r["query"]) for r in rows], self.max_query_len)
        p_ids, p_mask = self.tokenize([r["positive"] for r in rows], self.max_passage_len)
        batch = {"query_ids": q_ids, "query_mask": q_mask, "passage_ids": p_ids, "passage_mask": p_mask}
        k = self.num_negatives
        if k:
            n_ids, n_mask = self.tokenize([n for r in rows for n in r["negatives"]], self.max_passage_len)
            batch["negative_ids"] = n_ids.reshape(len(rows), k, -1)
            batch["negative_mask"] = n_mask.reshape(len(rows), k, -1)
        return batch
