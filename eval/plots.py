"""PNG plots of retrieval results: nDCG@10 by backend and mode, and Recall@k curves."""
from __future__ import annotations

from pathlib import Path

from rag.plotting import plt, save_figure  # noqa: F401 (Agg: files only; re-exported)


def row_label(row: dict) -> str:
    """'hnsw hybrid', 'keyword', '+ HyDE' where it applies."""
    label = row["mode"] if row["backend"] is None else f"{row['backend']} {row['mode']}"
    return label + (" + HyDE" if row["hyde"] else "")


def plot_ndcg(rows: list[dict], path: Path, title: str = "") -> Path:
    """Grouped bars: one group per backend (keyword alone first), one bar per mode (and HyDE)."""
    groups = list(dict.fromkeys("keyword" if r["backend"] is None else r["backend"] for r in rows))
    series = list(dict.fromkeys((r["mode"], r["hyde"]) for r in rows))
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(groups) + 2), 4.0))
    for i, (mode, hyde) in enumerate(series):
        xs, ys = [], []
        for g, group in enumerate(groups):
            for r in rows:
                if (r["mode"], r["hyde"]) == (mode, hyde) and ("keyword" if r["backend"] is None else r["backend"]) == group:
                    xs.append(g + (i - (len(series) - 1) / 2) * width)
                    ys.append(r["ndcg@10"])
        bars = ax.bar(xs, ys, width, label=mode + (" + HyDE" if hyde else ""), hatch="//" if hyde else None)
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel("nDCG@10")
    top = max((r["ndcg@10"] for r in rows), default=1.0)
    ax.set_ylim(0, min(1.0, top * 1.15 + 0.02))
    ax.set_title(title or "nDCG@10 by backend and mode")
    ax.legend(fontsize=8, loc="lower right")
    return save_figure(fig, path)


def plot_recall_curves(rows: list[dict], curves: dict[str, dict[int, float]], path: Path, title: str = "") -> Path:
    """Recall@k against k (log scale), one line per result row; `curves` is keyed by row_label.

    Colour says the backend, line style the mode (dense solid, hybrid dashed, keyword dotted),
    triangles mark HyDE."""
    fig, ax = plt.subplots(figsize=(7.0, 4.5))
    groups = list(dict.fromkeys("keyword" if r["backend"] is None else r["backend"] for r in rows))
    colours = plt.get_cmap("tab10")
    styles = {"dense": "-", "hybrid": "--", "keyword": ":"}
    for r in rows:
        curve = curves.get(row_label(r))
        if not curve:
            continue
        ks = sorted(curve)
        group = groups.index("keyword" if r["backend"] is None else r["backend"])
        ax.plot(ks, [curve[k] for k in ks], marker="^" if r["hyde"] else "o", markersize=3, label=row_label(r),
                color=colours(group % 10), linestyle=styles.get(r["mode"], "-"))
    ax.set_xscale("log")
    ax.set_xlabel("k (documents)")
    ax.set_ylabel("Recall@k")
    ax.set_ylim(0, 1.0)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title or "Recall@k")
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    return save_figure(fig, path)
