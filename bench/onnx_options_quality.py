"""What an approximate ONNX export option costs: nDCG@10 on CISI (out-of-domain retrieval, BEIR layout) and the
min cosine of its vectors against the exact export's, for ONNX export folders of the same model.

    python bench/onnx_options_quality.py --exact /tmp/g270-onnx --options /tmp/g270-onnx-int8emb \
        --data /work/shared/data/cisi --max-length 128

The exact export gives the JAX Encoder's vectors (min cosine >= 0.9999, tests/test_onnx_export.py), so it
stands in for JAX here: encoding CISI with JAX on a 2-core CPU takes far longer. Texts are cut at --max-length
tokens; queries get the folder's query prompt. Every folder encodes the same texts in the same batches.
"""
import argparse
import json
import os
import time

import numpy as np

from bitembed_jax.eval.local import NDCG_K, embed_texts, read_beir, retrieval_scores
from bitembed_jax.export.onnx_runtime import OnnxEncoder


def run(folder: str, data, args) -> dict:
    enc = OnnxEncoder(folder, max_length=args.max_length, threads=args.threads)
    t = time.perf_counter()
    docs = embed_texts(enc, data.corpus_texts, batch_size=args.batch_size)
    queries = embed_texts(enc, data.query_texts, batch_size=args.batch_size, prompt=enc.prompts.get("query", ""))
    scores = retrieval_scores(queries, docs, data.query_ids, data.corpus_ids, data.qrels)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(os.path.join(folder, "onnx")) for f in fs)
    return {"folder": folder, "ndcg": scores[f"ndcg_at_{NDCG_K}"], "encode_s": time.perf_counter() - t,
            "onnx_mb": size / 2 ** 20, "vectors": np.concatenate([docs, queries])}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--exact", required=True, help="the exact ONNX export folder")
    p.add_argument("--options", nargs="+", required=True, help="export folders of the same model with options")
    p.add_argument("--data", default="/work/shared/data/cisi")
    p.add_argument("--split", default="test")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    data = read_beir(args.data, args.split)
    ref = run(args.exact, data, args)
    print(f"{data.name}: {len(data.corpus_texts)} documents, {len(data.query_texts)} judged queries, "
          f"max {args.max_length} tokens")
    print("| export | ONNX MB | nDCG@10 | min cos vs exact (docs + queries) | mean cos |\n|---|---:|---:|---:|---:|")
    print(f"| {args.exact} | {ref['onnx_mb']:.0f} | {ref['ndcg']:.4f} | 1 | 1 |", flush=True)
    for folder in args.options:
        r = run(folder, data, args)
        cos = (r["vectors"] * ref["vectors"]).sum(axis=1)
        print(f"| {folder} | {r['onnx_mb']:.0f} | {r['ndcg']:.4f} | {cos.min():.4f} | {cos.mean():.4f} |", flush=True)
    print(json.dumps({"exact_encode_s": ref["encode_s"]}))


if __name__ == "__main__":
    main()
