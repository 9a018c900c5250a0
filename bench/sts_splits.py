"""Student/teacher STS ratios on labelled splits no recipe choice looked at, with paired bootstrap intervals.

    python bench/sts_splits.py --workdir runs/splits --teacher runs/quality7/teacher/model \\
        --model q10=runs/quality10/student/model --model q10a=runs/quality10a/ablation/model

The quality bench chose its recipes on STS-B test and the first 1,500 pairs of SICK-R test. A 95% claim made
there can be partly selection and partly sampling noise (a few hundred to 1,500 pairs). This bench scores the
same models on other labelled splits (by default STS-B dev, SICK-R trial, the 3,406 SICK-R test pairs after the
first 1,500, and SICK-R train; their labels and pairing were never used in training or in any choice) at
fp32/int8/int4/binary, and gives each model/teacher Spearman ratio with a 95% paired bootstrap interval
(the same resampled pairs for both models) and the share of resamples at or above ``--target``.
``--compare A:B`` adds the paired difference of two models' ratios (e.g. the distilled student against its
ablation), with its interval and the share of resamples where A is ahead.

Each model's fp32 vectors of every distinct sentence are cached in WORKDIR/emb/NAME.npz, written every
``--chunk`` sentences, so a killed run resumes where it stopped; a rerun with more models or splits only encodes
what is new. A name is tied to the model folder it was first given (WORKDIR/models.json): another folder under
the same name is refused. Prints markdown tables; the same goes to WORKDIR/report.md and the figures to
WORKDIR/results.json.
"""
import argparse
import json
import os
import platform
import sys
import time

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)  # runs from a checkout without installing the package

from bitembed_jax.io.paths import write_text_atomic  # noqa: E402

SHARED = os.path.join(ROOT, "..", "shared", "data")
PRECISIONS = ("fp32", "int8", "int4", "binary")
DEFAULT_SPLITS = ("stsb-dev=stsb/sts-dev.tsv", "sickr-dev=sickr/sts-dev.tsv", "sickr-test-rest=sickr/sts.tsv@1500:",
                  "sickr-train=sickr/sts-train.tsv")


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _named(text: str, flag: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise SystemExit(f"{flag} {text!r}: expected NAME=VALUE")
    return name, value


def parse_split(text: str):
    """NAME=PATH[@START:STOP]: PATH relative to ../shared/data unless absolute; rows [START, STOP) of the file."""
    name, spec = _named(text, "--split")
    path, _, rows = spec.partition("@")
    path = path if os.path.isabs(path) else os.path.join(SHARED, path)
    start, _, stop = rows.partition(":")
    try:
        lo, hi = int(start or 0), (int(stop) if stop else None)
    except ValueError:
        raise SystemExit(f"--split {text!r}: rows must be START:STOP integers, got {rows!r}") from None
    if not os.path.exists(path):
        raise SystemExit(f"--split {text!r}: {path} not found")
    return name, path, lo, hi


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True)
    p.add_argument("--teacher", required=True, help="the reference model folder (the ratios' denominator)")
    p.add_argument("--model", action="append", default=[], metavar="NAME=DIR", help="a model to score (repeat)")
    p.add_argument("--split", action="append", default=None, metavar="NAME=PATH[@START:STOP]",
                   help=f"an STS TSV (score, s1, s2); default: {', '.join(DEFAULT_SPLITS)}")
    p.add_argument("--compare", action="append", default=[], metavar="A:B",
                   help="also the paired difference of two models' ratios, e.g. student:ablation (repeat)")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--bootstrap", type=int, default=2000, help="paired resamples per interval")
    p.add_argument("--target", type=float, default=0.95, help="the ratio whose odds are reported")
    p.add_argument("--chunk", type=int, default=1024, help="sentences encoded between cache writes")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    models = [_named(m, "--model") for m in args.model]
    names = [n for n, _ in models]
    if "teacher" in names or len(set(names)) != len(names):
        raise SystemExit(f"--model: names must be distinct and not 'teacher', got {names}")
    args.models = [("teacher", args.teacher), *models]
    for name, path in args.models:
        if not os.path.exists(os.path.join(path, "bitembed_config.json")):
            raise SystemExit(f"model {name}: {path} is not a model folder (no bitembed_config.json)")
    args.compare_pairs = []
    for item in args.compare:
        a, sep, b = item.partition(":")
        if not sep or a not in names or b not in names or a == b:
            raise SystemExit(f"--compare {item!r}: expected A:B, two different --model names of {names}")
        args.compare_pairs.append((a, b))
    args.splits = [parse_split(s) for s in (args.split or DEFAULT_SPLITS)]
    return args


def check_models(args, wd):
    """Each name keeps its first model folder and max length, so a cache never mixes two models' vectors."""
    path = os.path.join(wd, "models.json")
    seen = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            seen = json.load(f)
    now = {n: {"dir": os.path.abspath(d), "max_length": args.max_length} for n, d in args.models}
    clash = [f"{n}: {seen[n]} then, {now[n]} now" for n in now if n in seen and seen[n] != now[n]]
    if clash:
        raise SystemExit(f"{path}: " + "; ".join(clash) + "; use another name or --workdir")
    write_text_atomic(path, json.dumps({**seen, **now}, indent=1))


def read_split(path, lo, hi):
    from bitembed_jax.eval.local import read_sts

    data = read_sts(path)
    sl = slice(lo, hi)
    return np.asarray(data.scores[sl]), data.s1[sl], data.s2[sl]


def _save_npz(path, texts, vecs):
    tmp = path + ".tmp.npz"
    np.savez(tmp, texts=np.asarray(texts, dtype=str), vecs=vecs)
    os.replace(tmp, path)


def embeddings(name, model_dir, texts, args, wd):
    """{text: fp32 vector} for ``texts``, from the cache plus what is newly encoded (saved as it goes)."""
    path = os.path.join(wd, "emb", f"{name}.npz")
    known, vecs = [], np.zeros((0, 0), np.float32)
    if os.path.exists(path):
        with np.load(path) as z:
            known, vecs = [str(t) for t in z["texts"]], z["vecs"]
    have = set(known)
    todo = sorted({t for t in texts if t not in have}, key=len)
    if todo:
        from bitembed_jax.encode import Encoder
        from bitembed_jax.eval.local import embed_texts

        enc = Encoder.from_pretrained(model_dir, max_length=args.max_length)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        t0 = time.perf_counter()
        for s in range(0, len(todo), args.chunk):
            part = todo[s: s + args.chunk]
            new = embed_texts(enc, part, batch_size=args.batch_size)
            known, vecs = known + part, (np.concatenate([vecs, new]) if len(vecs) else new)
            _save_npz(path, known, vecs)
            log(f"{name}: {s + len(part)}/{len(todo)} sentences ({time.perf_counter() - t0:.0f} s)")
    return dict(zip(known, vecs))


def scales(model_dir):
    from bitembed_jax.io.model_dir import read_config

    return read_config(model_dir)[1].get("embedding_scales", {})


def similarities(table, s1, s2, precision, scale):
    from bitembed_jax.eval.local import pairwise_similarity
    from bitembed_jax.quant.embedding import encode_storage

    a, b = (encode_storage(np.stack([table[t] for t in s]), precision, scale=scale) for s in (s1, s2))
    return pairwise_similarity(a, b)


def spearman_rows(sims: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """Spearman of each row of ``sims`` (B, n) against the same row of ``gold`` (B, n); ties get mean ranks."""
    from scipy.stats import rankdata

    x, y = rankdata(sims, axis=1), rankdata(gold, axis=1)
    x -= x.mean(axis=1, keepdims=True)
    y -= y.mean(axis=1, keepdims=True)
    return (x * y).sum(axis=1) / np.sqrt((x * x).sum(axis=1) * (y * y).sum(axis=1))


def paired_ratio(sim_s, sim_t, gold, n_boot: int, target: float, rng) -> dict:
    """Student/teacher Spearman ratio, its 95% percentile interval over paired resamples, and P(ratio >= target)."""
    rho_s, rho_t = (spearman_rows(s[None], gold[None])[0] for s in (sim_s, sim_t))
    idx = rng.integers(0, len(gold), size=(n_boot, len(gold)))
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = spearman_rows(sim_s[idx], gold[idx]) / spearman_rows(sim_t[idx], gold[idx])
    ratio = ratio[np.isfinite(ratio)]  # a resample of a tiny split can have constant scores: no correlation
    lo, hi = np.percentile(ratio, [2.5, 97.5])
    return {"student": float(rho_s), "teacher": float(rho_t), "ratio": float(rho_s / rho_t), "low": float(lo),
            "high": float(hi), "p_target": float(np.mean(ratio >= target)), "resamples": int(len(ratio))}


def paired_difference(sim_a, sim_b, sim_t, gold, n_boot: int, rng) -> dict:
    """(rho_a - rho_b) / rho_teacher in ratio points, its 95% interval over resamples that all three models share,
    and the share of resamples where A is ahead."""
    idx = np.concatenate([np.arange(len(gold))[None], rng.integers(0, len(gold), size=(n_boot, len(gold)))])
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = [spearman_rows(s[idx], gold[idx]) for s in (sim_a, sim_b, sim_t)]
        diff = (rho[0] - rho[1]) / rho[2]
    boot = diff[1:][np.isfinite(diff[1:])]
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"diff": float(diff[0]), "low": float(lo), "high": float(hi), "p_ahead": float(np.mean(boot > 0)),
            "resamples": int(len(boot))}


def report(results, args) -> str:
    import jax

    lines = [f"Paired bootstrap ({args.bootstrap} resamples, seed {args.seed}) of model / teacher Spearman; "
             f"teacher: {args.teacher}; max length {args.max_length}; hardware: "
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, jax {jax.__version__}.", ""]
    for split, n in results["pairs"].items():
        teacher = results["scores"][split]["teacher"]["fp32"]["teacher"]
        lines += [f"**{split}** ({n} pairs; teacher fp32 Spearman {teacher:.3f})", "",
                  "| model | " + " | ".join(PRECISIONS) + f" | resamples with fp32 ratio >= {args.target:.0%} |",
                  "|---|" + "---:|" * (len(PRECISIONS) + 1)]
        for name, _ in args.models[1:]:
            cells = results["scores"][split][name]
            lines.append(f"| {name} | " + " | ".join(
                f"{c['ratio']:.1%} [{c['low']:.1%}, {c['high']:.1%}]" for c in (cells[p] for p in PRECISIONS))
                + f" | {cells['fp32']['p_target']:.2f} |")
        lines.append("")
    for split, pairs in results.get("compare", {}).items():
        lines += [f"**{split}: A - B in points of the teacher's Spearman**", "",
                  "| A - B | " + " | ".join(PRECISIONS) + " | resamples with A ahead (fp32) |",
                  "|---|" + "---:|" * (len(PRECISIONS) + 1)]
        for key, cells in pairs.items():
            lines.append(f"| {key.replace(':', ' - ')} | " + " | ".join(
                f"{100 * c['diff'] + 0:+.1f} [{100 * c['low'] + 0:+.1f}, {100 * c['high'] + 0:+.1f}]"  # no -0.0
                for c in (cells[p] for p in PRECISIONS)) + f" | {cells['fp32']['p_ahead']:.2f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    wd = os.path.abspath(args.workdir)
    os.makedirs(wd, exist_ok=True)
    check_models(args, wd)
    splits = {name: read_split(path, lo, hi) for name, path, lo, hi in args.splits}
    texts = {t for _, s1, s2 in splits.values() for t in s1 + s2}
    log(f"{len(splits)} splits, {sum(len(g) for g, _, _ in splits.values())} pairs, {len(texts)} distinct sentences")
    sims = {}
    for name, model_dir in args.models:
        table, sc = embeddings(name, model_dir, texts, args, wd), scales(model_dir)
        sims[name] = {s: {p: similarities(table, s1, s2, p, sc.get(p)) for p in PRECISIONS}
                      for s, (_, s1, s2) in splits.items()}
    rng = np.random.default_rng(args.seed)
    scores = {s: {name: {p: paired_ratio(sims[name][s][p], sims["teacher"][s][p], gold, args.bootstrap,
                                         args.target, rng) for p in PRECISIONS} for name, _ in args.models}
              for s, (gold, _, _) in splits.items()}
    compare = {s: {f"{a}:{b}": {p: paired_difference(sims[a][s][p], sims[b][s][p], sims["teacher"][s][p], gold,
                                                      args.bootstrap, rng) for p in PRECISIONS}
                   for a, b in args.compare_pairs} for s, (gold, _, _) in splits.items() if args.compare_pairs}
    results = {"pairs": {s: len(g) for s, (g, _, _) in splits.items()}, "scores": scores, "compare": compare,
               "models": dict(args.models), "bootstrap": args.bootstrap, "seed": args.seed}
    text = report(results, args)
    write_text_atomic(os.path.join(wd, "results.json"), json.dumps(results, indent=1))
    write_text_atomic(os.path.join(wd, "report.md"), text + "\n")
    print(text)


if __name__ == "__main__":
    main()
