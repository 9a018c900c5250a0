"""The index bench's outputs: index_bench.json (meta + rows), index_bench.md (a table) and index_bench.png
(recall@k against exact fp32 vs queries/s at one thread, one point per setting)."""
import json
import os

_COLS = (("engine", "engine", "{}"), ("precision", "precision", "{}"), ("variant", "index", "{}"),
         ("rescore", "rescore", "x{}"), ("bytes_per_vector", "B/vec (disk)", "{:.1f}"),
         ("rss_delta_bytes", "RSS MB", "{:.1f}"), ("build_s", "build s", "{:.2f}"),
         ("recall_fp32", "recall@10 vs fp32", "{:.3f}"), ("recall_fp32_calibrated", "vs fp32-cal", "{:.3f}"),
         ("ndcg_at_10", "nDCG@10", "{:.4f}"), ("ndcg_ratio", "/ fp32", "{:.1%}"), ("qps_1t", "q/s 1t", "{:.0f}"),
         ("qps_2t", "q/s 2t", "{:.0f}"), ("p50_ms", "p50 ms", "{:.2f}"), ("p99_ms", "p99 ms", "{:.2f}"))


def _cell(row, key, fmt) -> str:
    v = row.get(key)
    if v is None:
        return "-"
    if key == "rss_delta_bytes":
        v = v / 1e6
    if key.startswith("recall_") and f"{key}_ci" in row:
        lo, hi = row[f"{key}_ci"]
        return f"{v:.3f} [{lo:.2f}, {hi:.2f}]"
    return fmt.format(v)


def markdown(meta: dict, rows: list[dict]) -> str:
    cols = [c for c in _COLS if any(r.get(c[0]) is not None for r in rows)]
    head = (f"{meta['corpus']}: {meta['n']} vectors of dim {meta['dim']}, {meta['queries']} queries; model "
            f"{meta['model']}; calibration {meta['calibration']}; {meta['host']}; {meta['date']}\n\n")
    lines = ["| " + " | ".join(c[1] for c in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(r, k, f) for k, _, f in cols) + " |" for r in rows]
    return head + "\n".join(lines) + "\n"


def fidelity(row: dict) -> float:
    """A row's recall against the exact search its codes approximate: calibrated codes approximate calibrated
    fp32, so their recall against raw fp32 mixes the index's loss with the change of geometry."""
    if row["precision"] == "fp32" or row.get("recall_fp32_calibrated") is None:
        return row["recall_fp32"]
    return row["recall_fp32_calibrated"]


def plot(path: str, meta: dict, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for i, r in enumerate(rows):
        mark, color = {"usearch": "o", "faiss": "s", "pgvector": "^"}[r["engine"]], f"C{i % 10}"
        point = (r["qps_1t"], fidelity(r))
        ax.scatter(*point, marker=mark, edgecolors=color, facecolors="none" if r["variant"] == "flat" else color)
        ax.annotate(f"{r['precision']}{' x' + str(r['rescore']) if r['rescore'] > 1 else ''}", point, fontsize=6)
    ax.set_xscale("log")
    ax.set_xlabel("queries/s, 1 thread (o usearch, s faiss, ^ pgvector; hollow flat, filled HNSW)")
    ax.set_ylabel(f"recall@{meta['k']} vs the exact search approximated\n(raw fp32 for fp32, else calibrated fp32)")
    ax.set_title(f"{meta['corpus']} ({meta['n']} x {meta['dim']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(out: str, meta: dict, rows: list[dict]) -> None:
    with open(os.path.join(out, "index_bench.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    with open(os.path.join(out, "index_bench.md"), "w") as f:
        f.write(markdown(meta, rows))
    plot(os.path.join(out, "index_bench.png"), meta, rows)
