"""Evaluation outputs: results.json, a markdown summary, and a score-vs-bytes plot.

A row is one score: {"model": the model's name (its folder's, or "teacher"), "role": "model"|"teacher", "dataset",
"metric", "score", "precision", "dim", "bytes_per_vector", optionally "calibration", "n_vectors", "index_bytes" and
the dataset's other metrics}.
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
    """One line per row; a calibration column when the rows compare calibrations."""
    cal = len({r.get("calibration") for r in rows if r["precision"] != "fp32"}) > 1
    lines = [header, ""] if header else []
    lines += ["| model | dataset | metric | precision | " + ("calibration | " if cal else "")
              + "dim | score | bytes/vector | index size |", "|---|---|---|---|" + ("---|" if cal else "")
              + "---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['dataset']} | {r['metric']} | {r['precision']} | "
                     + (f"{r.get('calibration', 'none')} | " if cal else "") + f"{r['dim']} | "
                     f"{_score(r['score'])} | {r['bytes_per_vector']} | {_size(r.get('index_bytes'))} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: str, datasets: list[str]) -> None:
    """One panel per dataset: the model's score vs bytes per vector (log2 axis), one line per Matryoshka
    dim (and calibration) through its precisions; the teacher's fp32 score as a dashed reference line."""
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4.5), squeeze=False)
    for ax, name in zip(axes[0], datasets):
        mine = [r for r in rows if r["dataset"] == name]
        model = [r for r in mine if r.get("role", "model") == "model"]
        cals = sorted({r.get("calibration", "none") for r in model if r["precision"] != "fp32"}) or ["none"]
        for dim in sorted({r["dim"] for r in model}, reverse=True):
            for cal in cals:  # each calibration's line starts from the (uncalibrated) fp32 point
                pts = sorted((r for r in model if r["dim"] == dim and (r["precision"] == "fp32"
                                                                       or r.get("calibration", "none") == cal)),
                             key=lambda r: r["bytes_per_vector"])
                xs, ys = [r["bytes_per_vector"] for r in pts], [r["score"] for r in pts]
                ax.plot(xs, ys, "o-", label=f"dim {dim}" + (f", calibration {cal}" if len(cals) > 1 else ""))
                for r in pts:
                    ax.annotate(r["precision"], (r["bytes_per_vector"], r["score"]), textcoords="offset points",
                                xytext=(4, 4), fontsize=8)
        for r in (r for r in mine if r.get("role") == "teacher"):
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
