"""Output-precision ladders with and without per-dimension calibration, on a BEIR folder.

    python bench/storage_calibration.py --model DIR --retrieval BEIR_DIR --calibration-texts FILE --workdir W

The model encodes the corpus, the judged queries (with the folder's query prompt) and a fixed-seed sample of
``--calibration-texts`` (e.g. training passages) once; the vectors are kept in WORKDIR (reused on a rerun for
the same model contents and options). Then every output precision is scored (nDCG@10, Recall@100) with:

- none: per-vector absmax codes (what a folder without statistics stores);
- standardize / range (``quant.calibration``), each calibrated on the sample texts ("train") and on the
  corpus itself ("corpus": what a user calibrating at indexing time gets);
- standardize on the corpus without the unit length ``quant.calibration`` gives standardised vectors (the
  issue's first check), to show what that step does.

A calibrated folder scored by ``bitembed-jax eval --calibration none,model,corpus`` gives the same figures for
its own method: this script only adds the other method without writing a folder per variant.
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # a checkout, not installed

from bitembed_jax.choices import CALIBRATION_METHODS, PRECISIONS  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--retrieval", required=True, help="a BEIR folder (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv)")
    p.add_argument("--split", default="test")
    p.add_argument("--calibration-texts", required=True, help="one text per line (e.g. training passages)")
    p.add_argument("--limit", type=int, default=1000, help="calibration texts used (a fixed-seed sample)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workdir", required=True, help="cached vectors and results.json")
    return p.parse_args(argv)


def vectors(args, data) -> dict:
    """fp32 vectors of corpus, queries and calibration sample; cached in the workdir for this model's contents."""
    from bitembed_jax.calibrate import sample
    from bitembed_jax.cli_encode import read_texts
    from bitembed_jax.io.model_dir import fingerprint

    texts = sample(read_texts(args.calibration_texts, "--calibration-texts"), args.limit, args.seed)
    key = {"model": fingerprint(args.model), "retrieval": os.path.abspath(args.retrieval), "split": args.split,
           "calibration_texts": os.path.abspath(args.calibration_texts), "n_calibration": len(texts),
           "seed": args.seed, "max_length": args.max_length}
    path = os.path.join(args.workdir, "vectors.npz")
    if os.path.exists(path):
        with np.load(path) as z:
            if json.loads(str(z["key"])) == key:
                return {k: z[k] for k in ("corpus", "queries", "calibration")}
    from bitembed_jax.encode import Encoder
    from bitembed_jax.eval.local import embed_texts

    enc = Encoder.from_pretrained(args.model, max_length=args.max_length)
    out = {"corpus": embed_texts(enc, data.corpus_texts, batch_size=args.batch_size),
           "queries": embed_texts(enc, data.query_texts, batch_size=args.batch_size,
                                  prompt=enc.prompts.get("query", "")),
           "calibration": embed_texts(enc, texts, batch_size=args.batch_size)}
    os.makedirs(args.workdir, exist_ok=True)
    with open(path + ".tmp", "wb") as f:
        np.savez(f, key=json.dumps(key), **out)
    os.replace(path + ".tmp", path)
    return out


def ladders(vecs: dict, data) -> list[dict]:
    from bitembed_jax.eval.local import retrieval_scores
    from bitembed_jax.quant.calibration import Calibration
    from bitembed_jax.quant.storage import encode_storage

    cals = {"none": None}
    for method in CALIBRATION_METHODS:
        for source in ("train", "corpus"):
            sample = vecs["calibration" if source == "train" else "corpus"]
            cals[f"{method}, {source}"] = Calibration.fit(sample, method, source=source)
    plain = cals["standardize, corpus"]  # the check: standardised, not scaled to unit length

    def code(x, p, name):
        if name.endswith("no unit length"):
            return encode_storage(x if p == "fp32" else (x - plain.center) / plain.width, p)
        return encode_storage(x, p, calibration=cals[name])

    rows = []
    for name in [*cals, "standardize, corpus, no unit length"]:
        for p in PRECISIONS:
            docs = code(vecs["corpus"], p, name)
            s = retrieval_scores(code(vecs["queries"], p, name), docs, data.query_ids, data.corpus_ids, data.qrels)
            rows.append({"calibration": name, "precision": p, "bytes_per_vector": docs.nbytes_per_vector, **s})
    return rows


def table(rows: list[dict], metric: str) -> str:
    lines = ["| calibration | " + " | ".join(PRECISIONS) + " | int8 >= ... >= binary | int8 - int4 |",
             "|---|" + "---:|" * (len(PRECISIONS) + 2)]
    for name in dict.fromkeys(r["calibration"] for r in rows):
        v = {r["precision"]: r[metric] for r in rows if r["calibration"] == name}
        ladder = [v[p] for p in PRECISIONS]
        in_order = all(a >= b for a, b in zip(ladder[1:], ladder[2:]))  # the codes; calibrated int8 may pass fp32
        lines.append(f"| {name} | " + " | ".join(f"{x:.3f}" for x in ladder)
                     + f" | {'yes' if in_order else 'no'} | {v['int8'] - v['int4']:+.3f} |")
    return "\n".join(lines)


def main(argv=None):
    from bitembed_jax.eval.local import read_beir

    args = parse_args(argv)
    data = read_beir(args.retrieval, args.split)
    rows = ladders(vectors(args, data), data)
    with open(os.path.join(args.workdir, "results.json"), "w") as f:
        json.dump({"args": vars(args), "rows": rows}, f, indent=1)
    bpv = {r["precision"]: r["bytes_per_vector"] for r in rows if r["calibration"] == "none"}
    print(f"{data.name}: {len(data.query_ids)} queries, {len(data.corpus_ids)} documents; bytes per vector "
          f"(per-vector scales) " + ", ".join(f"{p} {b}" for p, b in bpv.items()) + "\n")
    for metric, title in (("ndcg_at_10", "nDCG@10"), ("recall_at_100", "Recall@100")):
        print(f"**{title}**\n\n{table(rows, metric)}\n")


if __name__ == "__main__":
    main()
