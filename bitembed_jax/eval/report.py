"""Evaluation outputs: results.json, a markdown summary, and a score-vs-bytes plot.

A row is one score: {"model": "student"|"teacher", "dataset", "metric", "score", "precision", "dim",
"bytes_per_vector", optionally "n_vectors", "index_bytes" and the dataset's other metrics}.
"""
import json
import math
import os

RESULTS, SUMMARY, PLOT = "results.json", "summary.md", "plot.png"


def check_output(out_dir: str, overwrite: bool) -> None:
    """Refuse to replace earlier results unless asked: checked before any model is loaded."""
    existing = [n for n in (RESULTS, SUMMARY, PLOT, "mteb") if os.path.exists(os.path.join(out_dir, n))]
    if existing and not overwrite:
        raise FileExistsError(f"{out_dir} already holds results ({', '.join(existing)}); pass --overwrite")


def _size(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def _score(x) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def summary_markdown(rows: list[dict], header: str = "") -> str:
    lines = [header, ""] if header else []
    lines += ["| model | dataset | metric | precision | dim | score | bytes/vector | index size |",
              "|---|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['dataset']} | {r['metric']} | {r['precision']} | {r['dim']} | "
                     f"{_score(r['score'])} | {r['bytes_per_vector']} | {_size(r.get('index_bytes'))} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: str, datasets: list[str]) -> None:
    """One panel per dataset: student score vs bytes per vector (log2 axis), one line per Matryoshka
    dim through its precisions; the teacher's fp32 score as a dashed reference line."""
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4.5), squeeze=False)
    for ax, name in zip(axes[0], datasets):
        mine = [r for r in rows if r["dataset"] == name]
        student = [r for r in mine if r["model"] == "student"]
        for dim in sorted({r["dim"] for r in student}, reverse=True):
            pts = sorted((r for r in student if r["dim"] == dim), key=lambda r: r["bytes_per_vector"])
            xs, ys = [r["bytes_per_vector"] for r in pts], [r["score"] for r in pts]
            ax.plot(xs, ys, "o-", label=f"dim {dim}")
            for r in pts:
                ax.annotate(r["precision"], (r["bytes_per_vector"], r["score"]), textcoords="offset points",
                            xytext=(4, 4), fontsize=8)
        for r in (r for r in mine if r["model"] == "teacher"):
            ax.axhline(r["score"], ls="--", color="gray", label=f"teacher fp32 ({_score(r['score'])})")
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())  # 8, 16, ... rather than 2^3, 2^4
        ax.set_xlabel("bytes per vector")
        ax.set_ylabel(mine[0]["metric"] if mine else "score")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _finite(x):
    """JSON has no NaN: a score that is undefined (e.g. constant predictions) is written as null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


def write_outputs(out_dir: str, rows: list[dict], info: dict, plot_datasets: list[str]) -> dict:
    """results.json (``info`` + rows), summary.md and plot.png; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {k: os.path.join(out_dir, n) for k, n in (("results", RESULTS), ("summary", SUMMARY), ("plot", PLOT))}
    with open(paths["results"], "w") as f:
        json.dump(_finite({**info, "rows": rows}), f, indent=2)
    header = "\n".join(f"- {k}: {v}" for k, v in info.items() if not isinstance(v, (dict, list)))
    with open(paths["summary"], "w") as f:
        f.write(summary_markdown(rows, header))
    plot(rows, paths["plot"], plot_datasets)
    return paths
