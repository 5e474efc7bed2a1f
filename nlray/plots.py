"""Plots (PNG) and the per-class table (CSV) drawn from numbers the caller gives: the one module that imports
matplotlib. It reads nothing itself (no MLflow, no Ray); the caller fetches the numbers and logs the file.

    learning_curves_png({"train/loss": [(0, 2.1), (20, 1.7)], ...}, out)      one run: a panel a metric
    compared_curves_png({"train/loss": [("run-a (3f2a9c01)", [(0, 2.1), ...]), ...]}, out)   a line a run
    per_class_accuracy_png(confusion, labels, out)     per-class top-1 bars beside the confusion matrix
    per_class_accuracy_csv(confusion, labels)          the same as a table, weakest class first
    ablation_chart_png(out, title=..., metric=..., labels=..., ours=..., ours_error=..., paper=...)
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Sequence

import numpy as np

History = list[tuple[int, float]]  # [(step, value), ...] of one metric, by step
CONFUSION_TICKS_MAX = 60  # more classes than this: no class names on the per-class plot's axes
PER_CLASS_COLUMNS = ("class", "videos", "correct", "top1", "most_confused_with", "share")
DPI = 90


def agg_pyplot():
    """matplotlib.pyplot on the Agg backend: files only, no display (drivers and Ray workers have none)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curves_png(curves: dict[str, History], out: Path) -> Path:
    """One run's metric histories (loss, clip top-1, lr), a panel each, against the global step."""
    plt = agg_pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3.2))
    for ax, (key, history) in zip(np.atleast_1d(axes), curves.items()):
        _plot_history(ax, history)
        ax.set_title(key)
        ax.set_xlabel("step")
    fig.tight_layout()
    return _save(plt, fig, out)


def compared_curves_png(curves: dict[str, list[tuple[str, History]]], out: Path) -> Path:
    """Several runs overlaid: a panel a metric, in it a line a run (its label in the first panel's legend)."""
    plt = agg_pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.6))
    axes = np.atleast_1d(axes)
    for ax, (key, runs) in zip(axes, curves.items()):
        for label, history in runs:
            _plot_history(ax, history, label=label)
        ax.set_title(key)
        ax.set_xlabel("step")
    axes[0].legend(fontsize="small")
    fig.tight_layout()
    return _save(plt, fig, out)


def per_class_accuracy_png(confusion: np.ndarray, labels: list[str], out: Path) -> Path:
    """Per-class accuracy bars beside the (row-normalised) confusion matrix: class names on both axes (up to
    CONFUSION_TICKS_MAX classes), a colour bar for the share of each true class."""
    plt = agg_pyplot()
    rows = confusion.sum(1, keepdims=True).clip(min=1)
    norm = confusion / rows  # (K, K), rows sum to 1
    k = len(labels)
    names = labels if k <= CONFUSION_TICKS_MAX else [""] * k
    fig, (a, b) = plt.subplots(1, 2, figsize=(min(6 + 0.45 * k, 30), min(4 + 0.3 * k, 30)),
                               gridspec_kw={"width_ratios": [1, 2]})
    a.barh(range(k), np.diag(norm))
    a.set_yticks(range(k), names)
    a.invert_yaxis()  # class 0 on top, as in the matrix beside it
    a.set_xlim(0, 1)
    a.set_title("per-class video top-1")
    image = b.imshow(norm, vmin=0, vmax=1, cmap="viridis")
    b.set_xticks(range(k), names, rotation=90)
    b.set_yticks(range(k), names)
    b.set_xlabel("predicted")
    b.set_ylabel("true")
    b.set_title("confusion (share of each true class)")
    fig.colorbar(image, ax=b, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return _save(plt, fig, out)


def per_class_accuracy_csv(confusion: np.ndarray, labels: list[str]) -> str:
    """One row a class, weakest first: its videos, those right, top-1, the class most often predicted instead
    and the share of its videos that went there (rows of ``confusion``: true class, columns: predicted)."""
    if confusion.shape != (len(labels), len(labels)):
        raise ValueError(f"confusion of shape {confusion.shape} does not match {len(labels)} labels")
    rows = []
    for i, name in enumerate(labels):
        videos, correct = int(confusion[i].sum()), int(confusion[i, i])
        wrong = confusion[i].copy()
        wrong[i] = 0  # only the other classes
        j = int(np.argmax(wrong))
        confused = (labels[j], f"{wrong[j] / videos:.4f}") if wrong[j] > 0 else ("", "0.0000")
        top1 = correct / videos if videos else float("nan")
        rows.append((name, videos, correct, top1, *confused))
    rows.sort(key=lambda r: (r[1] == 0, r[3] if r[1] else 0.0, r[0]))  # classes without videos last
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(PER_CLASS_COLUMNS)
    writer.writerows((n, v, c, f"{t:.4f}" if v else "", m, sh) for n, v, c, t, m, sh in rows)
    return out.getvalue()


def ablation_chart_png(out: Path, *, title: str, metric: str, labels: Sequence[str], ours: Sequence[float],
                       ours_error: Sequence[float], paper: Sequence[float]) -> Path:
    """An ablation table's rows: our mean (%) as a bar with its error bar (left axis), the paper's Kinetics-400
    top-1 (%) as a marker on a right axis of its own (different data, different scale); nan: no value."""
    plt = agg_pyplot()
    x = range(len(labels))
    fig, ax = plt.subplots(figsize=(max(4.5, 1.4 * len(labels)), 4.0), layout="constrained")
    ax.bar(x, ours, yerr=ours_error, capsize=4, color="tab:blue", alpha=0.8, label=f"ours ({metric})")
    ax.set_ylabel(f"ours: {metric} (%)")
    ax.set_xticks(list(x), labels, rotation=20, ha="right")
    paper_axis = ax.twinx()
    paper_axis.plot(x, paper, "D", color="tab:red", label="paper (K400 top-1)")
    paper_axis.set_ylabel("paper: Kinetics-400 top-1 (%)", color="tab:red")
    ax.set_title(title, fontsize=9)
    fig.legend(loc="outside lower center", ncol=2, fontsize=7)
    return _save(plt, fig, out)


def _plot_history(ax, history: History, **kwargs) -> None:
    ax.plot([s for s, _ in history], [v for _, v in history], **kwargs)


def _save(plt, fig, out: Path) -> Path:
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return out
