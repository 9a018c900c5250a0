"""Min / mean cosine of ONNX export folders (or plain .onnx files of the same model) against a reference one, on
real sentences (STS-B dev, read at run time), all fed the same token ids.

    python bench/onnx_fidelity.py --reference G270-fp-onnx --others G270-fp-onnx-int8-dynamic G270-fp-onnx-int8emb

The tokenizer is the reference folder's; texts are cut at --max-length tokens.
"""
import argparse
import os

import numpy as np
import onnxruntime as ort

from bitembed_jax.eval.local import read_sts
from bitembed_jax.export.onnx_runtime import session_options


def vectors(folder: str, ids: np.ndarray, mask: np.ndarray, batch: int) -> np.ndarray:
    sess = ort.InferenceSession(os.path.join(folder, "onnx", "model.onnx"), session_options(1),
                                providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(["sentence_embedding"], {"input_ids": ids[i:i + batch],
                                                             "attention_mask": mask[i:i + batch]})[0]
                           for i in range(0, len(ids), batch)])


def main(argv=None):
    from transformers import AutoTokenizer

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reference", required=True)
    p.add_argument("--others", nargs="+", required=True)
    p.add_argument("--data", default="/work/shared/data/stsb/sts-dev.tsv")
    p.add_argument("--texts", type=int, default=64)
    p.add_argument("--max-length", type=int, default=128)
    args = p.parse_args(argv)
    sts = read_sts(args.data)
    texts = list(dict.fromkeys(sts.s1 + sts.s2))[:args.texts]
    enc = AutoTokenizer.from_pretrained(args.reference)(texts, padding=True, truncation=True,
                                                        max_length=args.max_length, return_tensors="np")
    ids, mask = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
    ref = vectors(args.reference, ids, mask, 16)
    print(f"{len(texts)} texts, {mask.sum(1).mean():.1f} tokens on average\n| folder | min cos | mean cos |\n|---|---:|---:|")
    for folder in args.others:
        cos = (vectors(folder, ids, mask, 16) * ref).sum(axis=1)
        print(f"| {folder} | {cos.min():.4f} | {cos.mean():.4f} |", flush=True)


if __name__ == "__main__":
    main()
