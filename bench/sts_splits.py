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

Each split's resamples are drawn once, from ``--seed`` and the split's name, and shared by every model,
precision and comparison: all figures of a split are paired, and adding a model or a split changes no other
interval.

Each model's fp32 vectors of every distinct sentence are cached in WORKDIR/emb/NAME/, one file per ``--chunk``
sentences, each written once, so a killed run resumes where it stopped; a rerun with more models or splits only
encodes what is new. A name is tied to the contents of the model folder it was first given (a hash of its files,
in WORKDIR/models.json): a folder with other contents under the same name, a model retrained in place among them,
is refused. Prints markdown tables; the same goes to WORKDIR/report.md and the figures to WORKDIR/results.json.
"""
import argparse
import glob
import json
import os
import platform
import sys
import time
import zlib

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
    """Each name keeps its first model (by contents) and max length, so a cache never mixes two models' vectors."""
    from bitembed_jax.io.model_dir import fingerprint

    path = os.path.join(wd, "models.json")
    seen = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            seen = json.load(f)
    now = {n: {"fingerprint": fingerprint(d), "max_length": args.max_length, "dir": os.path.abspath(d)}
           for n, d in args.models}
    key = lambda e: (e.get("fingerprint"), e.get("max_length"))  # noqa: E731
    clash = [f"{n}: {seen[n]} then, {now[n]} now" for n in now if n in seen and key(seen[n]) != key(now[n])]
    if clash:
        raise SystemExit(f"{path}: " + "; ".join(clash) + "; use another name or --workdir")
    write_text_atomic(path, json.dumps({**seen, **now}, indent=1))


def read_split(path, lo, hi):
    from bitembed_jax.eval.local import read_sts

    data = read_sts(path)
    sl = slice(lo, hi)
    return np.asarray(data.scores[sl]), data.s1[sl], data.s2[sl]


def _save_npz(path, texts, vecs):
    tmp = path + ".tmp"  # not *.npz: a file left by a kill is never read as a chunk
    with open(tmp, "wb") as f:
        np.savez(f, texts=np.asarray(texts, dtype=str), vecs=vecs)
    os.replace(tmp, path)


def embeddings(name, model_dir, texts, args, wd):
    """{text: fp32 vector} for ``texts``, from the cache plus what is newly encoded (saved as it goes)."""
    folder = os.path.join(wd, "emb", name)
    chunks = sorted(glob.glob(os.path.join(folder, "*.npz")))
    known, parts = [], []
    for path in chunks:
        with np.load(path) as z:
            known += [str(t) for t in z["texts"]]
            parts.append(z["vecs"])
    have = set(known)
    todo = sorted({t for t in texts if t not in have}, key=len)
    if todo:
        from bitembed_jax.encode import Encoder
        from bitembed_jax.eval.local import embed_texts

        enc = Encoder.from_pretrained(model_dir, max_length=args.max_length)
        os.makedirs(folder, exist_ok=True)
        t0 = time.perf_counter()
        for k, s in enumerate(range(0, len(todo), args.chunk), start=len(chunks)):
            part = todo[s: s + args.chunk]
            new = embed_texts(enc, part, batch_size=args.batch_size)
            _save_npz(os.path.join(folder, f"{k:06d}.npz"), part, new)
            known, parts = known + part, parts + [new]
            log(f"{name}: {s + len(part)}/{len(todo)} sentences ({time.perf_counter() - t0:.0f} s)")
    return dict(zip(known, np.concatenate(parts))) if parts else {}


def similarities(table, s1, s2, precision, meta):
    from bitembed_jax.eval.local import pairwise_similarity
    from bitembed_jax.quant.storage import model_storage

    a, b = (model_storage(np.stack([table[t] for t in s]), precision, meta) for s in (s1, s2))
    return pairwise_similarity(a, b)


def _centered_ranks(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    r = rankdata(x, axis=1)  # ties get mean ranks
    return r - r.mean(axis=1, keepdims=True)


def _correlate(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x * y).sum(axis=1) / np.sqrt((x * x).sum(axis=1) * (y * y).sum(axis=1))


class Resampled:
    """A split's gold scores and its paired bootstrap: row 0 is the split itself, rows 1..n_boot resample its pairs
    with replacement. The resamples depend on the seed and the split's name alone, and the gold ranks of every
    resample are computed once for all models and precisions."""

    def __init__(self, gold: np.ndarray, n_boot: int, seed: int, name: str):
        n = len(gold)
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        self.idx = np.concatenate([np.arange(n)[None], rng.integers(0, n, size=(n_boot, n))])
        self._gold = _centered_ranks(gold[self.idx])

    def spearman(self, sims: np.ndarray) -> np.ndarray:
        """(n_boot + 1,) Spearman of ``sims`` (one per pair) against gold, on the split then on each resample."""
        with np.errstate(invalid="ignore", divide="ignore"):  # a resample of a tiny split can have constant gold
            return _correlate(_centered_ranks(sims[self.idx]), self._gold)


def _interval(boot: np.ndarray) -> tuple[np.ndarray, float, float]:
    boot = boot[np.isfinite(boot)]
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return boot, float(lo), float(hi)


def ratio_stats(rho_s: np.ndarray, rho_t: np.ndarray, target: float) -> dict:
    """Student/teacher Spearman ratio (row 0), its 95% percentile interval over the paired resamples (rows 1..),
    and the share of resamples with a ratio >= target."""
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = rho_s / rho_t
    boot, lo, hi = _interval(ratio[1:])
    return {"student": float(rho_s[0]), "teacher": float(rho_t[0]), "ratio": float(ratio[0]), "low": lo,
            "high": hi, "p_target": float(np.mean(boot >= target)), "resamples": int(len(boot))}


def difference_stats(rho_a: np.ndarray, rho_b: np.ndarray, rho_t: np.ndarray) -> dict:
    """(rho_a - rho_b) / rho_teacher in ratio points (row 0), its 95% interval over the shared resamples, and the
    share of resamples where A is ahead."""
    with np.errstate(invalid="ignore", divide="ignore"):
        diff = (rho_a - rho_b) / rho_t
    boot, lo, hi = _interval(diff[1:])
    return {"diff": float(diff[0]), "low": lo, "high": hi, "p_ahead": float(np.mean(boot > 0)),
            "resamples": int(len(boot))}


def report(results, args) -> str:
    import jax

    lines = [f"Paired bootstrap ({args.bootstrap} resamples per split, seed {args.seed}, shared by all models) of "
             f"model / teacher Spearman; "
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
    from bitembed_jax.io.model_dir import read_config

    args = parse_args(argv)
    wd = os.path.abspath(args.workdir)
    os.makedirs(wd, exist_ok=True)
    check_models(args, wd)
    splits = {name: read_split(path, lo, hi) for name, path, lo, hi in args.splits}
    texts = {t for _, s1, s2 in splits.values() for t in s1 + s2}
    log(f"{len(splits)} splits, {sum(len(g) for g, _, _ in splits.values())} pairs, {len(texts)} distinct sentences")
    tables = {name: embeddings(name, d, texts, args, wd) for name, d in args.models}
    metas = {name: read_config(d)[1] for name, d in args.models}
    rho = {}
    for s, (gold, s1, s2) in splits.items():
        boot = Resampled(gold, args.bootstrap, args.seed, s)
        rho[s] = {name: {p: boot.spearman(similarities(tables[name], s1, s2, p, metas[name])) for p in PRECISIONS}
                  for name, _ in args.models}
    scores = {s: {name: {p: ratio_stats(r[name][p], r["teacher"][p], args.target) for p in PRECISIONS}
                  for name, _ in args.models} for s, r in rho.items()}
    compare = {s: {f"{a}:{b}": {p: difference_stats(r[a][p], r[b][p], r["teacher"][p]) for p in PRECISIONS}
                   for a, b in args.compare_pairs} for s, r in rho.items() if args.compare_pairs}
    results = {"pairs": {s: len(g) for s, (g, _, _) in splits.items()}, "scores": scores, "compare": compare,
               "models": dict(args.models), "bootstrap": args.bootstrap, "seed": args.seed}
    text = report(results, args)
    write_text_atomic(os.path.join(wd, "results.json"), json.dumps(results, indent=1))
    write_text_atomic(os.path.join(wd, "report.md"), text + "\n")
    print(text)


if __name__ == "__main__":
    main()
