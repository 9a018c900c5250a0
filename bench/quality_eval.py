"""bench/quality_gemma3_270m.py's cached evaluations and its out-of-domain part (``--ood DIR``): each model scored
on BEIR folders that no stage trains on (nDCG@10, Recall@100, every output precision), and the report's lead
table of out-of-domain retention."""
import json
import os
import time

from bitembed_jax.choices import PRECISIONS as OOD_PRECISIONS  # every stored precision, int2 included
from bitembed_jax.io.paths import write_text_atomic

OOD_METRICS = (("ndcg_at_10", "nDCG@10"), ("recall_at_100", "Recall@100"))


def ood_folders(dirs: list[str], error) -> list[tuple[str, str]]:
    """(name, absolute folder) per --ood DIR, named by the folder; ``error`` (the parser's) stops on a bad one."""
    out = []
    for d in dirs:
        missing = [f for f in ("corpus.jsonl", "queries.jsonl", os.path.join("qrels", "test.tsv"))
                   if not os.path.isfile(os.path.join(d, f))]
        if missing:
            error(f"--ood {d}: not a BEIR folder (missing {', '.join(missing)})")
        name = os.path.basename(os.path.normpath(os.path.abspath(d)))
        if name in dict(out):
            error(f"--ood {d}: two folders named {name!r}; the report names each by its folder")
        out.append((name, os.path.abspath(d)))
    return out


def cached_eval(model_dir: str, cache: str, compute) -> dict:
    """{"rows": compute(), ...} cached as JSON with a hash of the model folder's contents: reused for a folder
    with the same contents (a copied teacher), never for a model retrained in place."""
    from bitembed_jax.io.model_dir import fingerprint

    want = fingerprint(model_dir)
    if os.path.exists(cache):
        with open(cache) as f:
            out = json.load(f)
        # the same contents anywhere; a cache from before contents were recorded: the same path
        same = out["fingerprint"] == want if "fingerprint" in out else out.get("model", model_dir) == model_dir
        if not same:
            raise SystemExit(f"{cache} holds the figures of {out.get('model')} with other contents than {model_dir} "
                             "has now: use another NAME, or move the file aside to evaluate again")
        return out
    t0 = time.perf_counter()
    rows = compute()
    out = {"rows": rows, "seconds": time.perf_counter() - t0, "model": model_dir, "fingerprint": want}
    write_text_atomic(cache, json.dumps(out, indent=1))
    return out


def evaluate_ood(model_dir: str, folder: str, max_length: int, cache: str) -> dict:
    """One model on one BEIR folder (its test qrels), every output precision, the folder's own calibration."""
    def compute():
        from bitembed_jax.encode import Encoder
        from bitembed_jax.eval.local import evaluate_retrieval, read_beir

        enc = Encoder.from_pretrained(model_dir, max_length=max_length)
        return evaluate_retrieval(enc, read_beir(folder), OOD_PRECISIONS, query_prompt=enc.prompts.get("query", ""))

    return cached_eval(model_dir, cache, compute)


def ood_report(scores: dict, models: list[str], labels: dict) -> list[str]:
    """Markdown lines: per dataset and metric, each model's scores and its share of the teacher's at every
    precision. ``scores``: {model: {dataset: rows}}; the ratios lead."""
    datasets = list(dict.fromkeys(ds for m in scores.values() for ds in m))
    head = ["| dataset | metric | model | " + " | ".join(OOD_PRECISIONS) + " |",
            "|---|---|---|" + "---:|" * len(OOD_PRECISIONS)]
    ratios, tables = list(head), list(head)
    for ds in datasets:
        for key, title in OOD_METRICS:
            v = {m: {r["precision"]: r[key] for r in scores[m][ds]} for m in models if ds in scores.get(m, {})}
            for m in v:
                tables.append(f"| {ds} | {title} | {labels.get(m, m)} | "
                              + " | ".join(f"{v[m][p]:.3f}" for p in OOD_PRECISIONS) + " |")
                if m != "teacher" and "teacher" in v:
                    ratios.append(f"| {ds} | {title} | {m} / teacher | " + " | ".join(
                        f"{v[m][p] / v['teacher'][p]:.1%}" if v["teacher"][p] else "-" for p in OOD_PRECISIONS)
                        + " |")
    return ["**Out of domain: share of the teacher's score** (BEIR folders no stage trained on)", "", *ratios, "",
            "**Out of domain: scores**", "", *tables, ""]
