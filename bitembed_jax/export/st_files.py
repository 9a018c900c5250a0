"""Tokenizer and sentence-transformers files of an export folder.

Last-token pooling reads the EOS token our ``Tokenize`` appends to every text. PyTorch users tokenize with
the tokenizer alone, so the exported tokenizer appends EOS itself: its ``tokenizer.json`` post-processor
gets a template ``[prefix] $A [suffix] EOS`` (the prefix/suffix the source tokenizer already adds, e.g.
Gemma's BOS) and ``tokenizer_config.json`` says ``add_eos_token: true`` (transformers rebuilds the
template from these flags when they are present). Padding goes to the right, as in training. The result
is checked: the exported tokenizer must give exactly the ids our ``Tokenize`` feeds the JAX model, and
our ``Tokenize`` must give the same ids with either tokenizer.

The sentence-transformers files use the long-standing layout (``sentence_transformers.models.*`` module
types, ``max_seq_length`` and ``pooling_mode``), which sentence-transformers 2.x to 6.x all read.
"""
import json
import os
import shutil

from bitembed_jax.data.tokenize import Tokenize
from bitembed_jax.io.model_dir import TOKENIZER_FILES

PROBES = ("hello world", "A longer probe sentence, with punctuation: 42!", "x")
# post-processors that add special tokens; the others (ByteLevel offsets) are kept
_ADDERS = ("TemplateProcessing", "BertProcessing", "RobertaProcessing")


def _strip_adders(pp):
    if pp is None:
        return []
    if pp.get("type") == "Sequence":
        return [q for p in pp["processors"] for q in _strip_adders(p)]
    return [] if pp.get("type") in _ADDERS else [pp]


def _template(prefix: list, suffix: list, eos: tuple) -> dict:
    """tokenizers' TemplateProcessing JSON: prefix $A suffix EOS (pairs: the same around $B)."""
    def special(tok, type_id):
        return {"SpecialToken": {"id": tok, "type_id": type_id}}

    def seq(name, type_id, toks):
        return ([special(t, type_id) for t, _ in prefix] + [{"Sequence": {"id": name, "type_id": type_id}}]
                + [special(t, type_id) for t, _ in toks])

    tail = suffix + [eos]
    specials = {t: {"id": t, "ids": [i], "tokens": [t]} for t, i in prefix + tail}
    return {"type": "TemplateProcessing", "single": seq("A", 0, tail), "pair": seq("A", 0, tail) + seq("B", 1, tail),
            "special_tokens": specials}


def _affixes(tok):
    """(prefix ids, suffix ids) the tokenizer adds around the text, the same for every probe."""
    out = set()
    for text in PROBES:
        full = tok(text, add_special_tokens=True)["input_ids"]
        plain = tok(text, add_special_tokens=False)["input_ids"]
        n = len(full) - len(plain)
        cut = next((i for i in range(n + 1) if full[i:i + len(plain)] == plain), None)
        if cut is None:
            raise ValueError("the tokenizer changes the text tokens when adding special tokens; cannot make it "
                             "append EOS for last-token pooling")
        out.add((tuple(full[:cut]), tuple(full[cut + len(plain):])))
    if len(out) != 1:
        raise ValueError(f"the tokenizer adds different special tokens to different texts: {sorted(out)}")
    prefix, suffix = out.pop()
    return list(prefix), list(suffix)


def write_tokenizer(src_dir: str, dst_dir: str, *, append_eos: bool, max_length: int) -> None:
    """Copy the tokenizer files; with ``append_eos`` make the tokenizer end every text with EOS."""
    from transformers import AutoTokenizer

    names = [n for n in TOKENIZER_FILES if os.path.exists(os.path.join(src_dir, n))]
    if "tokenizer_config.json" not in names:
        raise FileNotFoundError(f"{src_dir}: no tokenizer files (tokenizer_config.json) to export")
    for n in names:
        shutil.copy2(os.path.join(src_dir, n), os.path.join(dst_dir, n))
    src = AutoTokenizer.from_pretrained(src_dir)
    cfg_path = os.path.join(dst_dir, "tokenizer_config.json")
    with open(cfg_path) as f:
        tcfg = json.load(f)
    tcfg["padding_side"] = "right"
    if append_eos:
        if src.eos_token_id is None:
            raise ValueError(f"{src_dir}: the tokenizer has no eos_token, which last-token pooling needs")
        prefix, suffix = _affixes(src)
        if not (suffix and suffix[-1] == src.eos_token_id):
            if "tokenizer.json" not in names:
                raise FileNotFoundError(f"{src_dir}: last-token pooling needs a tokenizer.json to make the "
                                        "exported tokenizer append EOS")
            tj_path = os.path.join(dst_dir, "tokenizer.json")
            with open(tj_path, encoding="utf-8") as f:
                tj = json.load(f)
            ids_toks = lambda ids: [(t, i) for t, i in zip(src.convert_ids_to_tokens(ids), ids)]  # noqa: E731
            procs = _strip_adders(tj.get("post_processor")) + [
                _template(ids_toks(prefix), ids_toks(suffix), (src.eos_token, src.eos_token_id))]
            tj["post_processor"] = procs[0] if len(procs) == 1 else {"type": "Sequence", "processors": procs}
            with open(tj_path, "w", encoding="utf-8") as f:
                json.dump(tj, f, ensure_ascii=False)
            if not suffix and prefix in ([], [src.bos_token_id]):
                tcfg["add_bos_token"] = bool(prefix)
                tcfg["add_eos_token"] = True
            else:  # flags cannot say this; let the tokenizer.json template stand
                tcfg.pop("add_bos_token", None)
                tcfg.pop("add_eos_token", None)
    with open(cfg_path, "w", encoding="utf-8") as f:
        json.dump(tcfg, f, indent=2, ensure_ascii=False)

    # the exported tokenizer must feed the PyTorch model what our Tokenize feeds the JAX model
    dst = AutoTokenizer.from_pretrained(dst_dir)
    texts = list(PROBES) + ["word " * (max_length + 8)]
    ids, mask = Tokenize(src, add_eos=append_eos)(texts, max_length)
    ids2, mask2 = Tokenize(dst, add_eos=append_eos)(texts, max_length)
    if not ((ids == ids2).all() and (mask == mask2).all()):
        raise RuntimeError("internal: the exported tokenizer changes the ids the JAX encoder reads")
    for row, seq in enumerate(dst(texts, truncation=True, max_length=max_length)["input_ids"]):
        if list(ids[row, :mask[row].sum()]) != list(seq):
            raise RuntimeError(f"internal: the exported tokenizer gives {seq[:8]}... for {texts[row][:30]!r}, "
                               f"the JAX encoder reads {list(ids[row, :8])}...")


def write_sentence_transformers(out_dir: str, *, hidden_size: int, pooling: str, prompts: dict,
                                max_length: int) -> None:
    """modules.json, sentence_bert_config.json, 1_Pooling/, 2_Normalize/, config_sentence_transformers.json."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    mode = {"last": "lasttoken", "mean": "mean"}[pooling]
    pool = {"word_embedding_dimension": hidden_size, "pooling_mode": mode, "include_prompt": True}
    st = {"prompts": {"query": prompts.get("query", ""), "document": prompts.get("document", "")},
          "default_prompt_name": None, "similarity_fn_name": "cosine", "model_type": "SentenceTransformer"}
    files = {"modules.json": modules, "sentence_bert_config.json": {"max_seq_length": max_length,
                                                                    "do_lower_case": False},
             "1_Pooling/config.json": pool, "2_Normalize/config.json": {},
             "config_sentence_transformers.json": st}
    for name, obj in files.items():
        path = os.path.join(out_dir, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, ensure_ascii=False)
