"""The report's figures (matplotlib, Agg, no pyplot state): one function per figure, each writing a PNG.

Every figure uses the same colour per row (:func:`colours`): single models solid, ensembles dashed.
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from histo.data.breakhis import SUBTYPES

DPI = 110
mpl.rcParams.update({"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 9})


def colours(names: list[str]) -> dict[str, str]:
    """One colour per row, in row order (tab10, tab20 beyond ten rows)."""
    cmap = mpl.colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {name: mpl.colors.to_hex(cmap(i % cmap.N)) for i, name in enumerate(names)}


def _style(kind: str) -> dict:
    return {"linestyle": "--", "linewidth": 2.2} if kind == "ensemble" else {"linestyle": "-", "linewidth": 1.8}


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, facecolor="white", bbox_inches="tight")
    return path


def read_curves(path: Path) -> pd.DataFrame | None:
    """Per-epoch means of a Lightning CSV log (``csv/metrics.csv``), epochs counted from 1; None if absent."""
    if path is None or not path.is_file():
        return None
    log = pd.read_csv(path)
    if "epoch" not in log.columns:
        return None
    curves = log.drop(columns=[c for c in ("step",) if c in log.columns]).groupby("epoch").mean()
    curves.index = curves.index + 1
    return curves


def best_epoch(record: dict, curves: pd.DataFrame) -> int | None:
    """The epoch (from 1) of the checkpoint the predictions came from: from its file name, else max val/acc."""
    match = re.search(r"epoch[=_-]?(\d+)", str(record.get("checkpoint") or ""))
    if match:
        return int(match.group(1)) + 1
    if "val/acc" in curves and curves["val/acc"].notna().any():
        return int(curves["val/acc"].idxmax())
    return None


def learning_curves(curves: dict[str, tuple[pd.DataFrame, int | None]], colour: dict[str, str], path: Path) -> Path | None:
    """Loss and accuracy per epoch, train dashed and val solid, a star at the chosen checkpoint."""
    curves = {k: v for k, v in curves.items() if v[0] is not None}
    if not curves:
        return None
    fig = Figure(figsize=(11, 4.2))
    axes = fig.subplots(1, 2)
    for ax, metric, title in ((axes[0], "loss", "Loss (cross-entropy)"), (axes[1], "acc", "Accuracy")):
        for name, (frame, best) in curves.items():
            for split, style in (("train", ":"), ("val", "-")):
                column = f"{split}/{metric}"
                if column in frame and frame[column].notna().any():
                    series = frame[column].dropna()
                    ax.plot(series.index, series.values, style, color=colour[name], linewidth=1.8, marker="o",
                            markersize=3)
            if best is not None and f"val/{metric}" in frame and best in frame.index:
                ax.plot([best], [frame.loc[best, f"val/{metric}"]], "*", color=colour[name], markersize=14,
                        markeredgecolor="black", markeredgewidth=0.6)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric if metric == "loss" else "accuracy")
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(mpl.ticker.MaxNLocator(integer=True))
    handles = [mpl.lines.Line2D([], [], color=colour[n], linewidth=2.5, label=n) for n in curves]
    handles += [mpl.lines.Line2D([], [], color="grey", linestyle="-", label="val"),
                mpl.lines.Line2D([], [], color="grey", linestyle=":", label="train"),
                mpl.lines.Line2D([], [], color="grey", marker="*", linestyle="", markersize=12,
                                 markeredgecolor="black", label="checkpoint used")]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.suptitle("Learning curves (from each run's csv/metrics.csv)")
    fig.tight_layout()
    return _save(fig, path)


def roc_curves(rows, numbers: dict, colour: dict[str, str], positive: str, path: Path) -> Path | None:
    """ROC curves of every row with its AUROC; when every curve is good (AUROC >= 0.9) but not all are
    perfect, a zoom on the top-left corner beside it, where near-perfect curves differ."""
    rows = [r for r in rows if "roc" in numbers[r.name]]
    if not rows:
        return None
    aurocs = [numbers[r.name]["overall"]["auroc"] for r in rows]
    zoomed = 0.9 <= min(aurocs) and min(aurocs) < 1.0  # nothing to see in the corner of perfect curves
    fig = Figure(figsize=(11, 4.8) if zoomed else (6.2, 5.2))
    axes = list(np.atleast_1d(fig.subplots(1, 2 if zoomed else 1)))
    corner = 0.0
    for row, auroc in zip(rows, aurocs, strict=True):
        roc = numbers[row.name]["roc"]
        ci = numbers[row.name].get("ci", {}).get("overall", {}).get("auroc")
        label = f"{row.name}: AUROC {auroc:.3f}" + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci and ci[0] is not None else "")
        for ax in axes:
            ax.plot(roc["fpr"], roc["tpr"], color=colour[row.name], label=label, drawstyle="steps-post",
                    **_style(row.kind))
        fpr, tpr = np.asarray(roc["fpr"]), np.asarray(roc["tpr"])
        corner = min(corner or 1.0, tpr[fpr <= 0.2].max())
    full = axes[0]
    full.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle=":", label="chance")
    full.set_xlim(-0.01, 1.01)
    full.set_ylim(-0.01, 1.01)
    full.set_title("ROC curve")
    full.legend(loc="lower right", fontsize=8.5)
    if zoomed:
        low = max(0.0, np.floor((corner - 0.02) * 20) / 20)
        axes[1].set_xlim(-0.004, 0.2)
        axes[1].set_ylim(low, 1.004)
        axes[1].set_title("Zoom on the top-left corner")
    for ax in axes:
        ax.set_xlabel("false-positive rate (1 - specificity)")
        ax.set_ylabel(f"true-positive rate (sensitivity, {positive})")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def confusion_matrices(rows, numbers: dict, colour: dict[str, str], class_names: list[str], path: Path) -> Path:
    """One confusion matrix per row: counts and the share of each true class (the colour)."""
    n = len(rows)
    cols = min(n, 4 if len(class_names) <= 2 else 2)
    nrows = int(np.ceil(n / cols))
    side = 2.6 if len(class_names) <= 2 else 5.2
    fig = Figure(figsize=(cols * (side + 0.6), nrows * (side + 0.5)))
    axes = np.atleast_1d(fig.subplots(nrows, cols)).ravel()
    short = [c.replace("_", " ") for c in class_names]
    for ax, row in zip(axes, rows, strict=False):
        cm = np.asarray(numbers[row.name]["confusion"], dtype=float)
        share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                text = f"{int(cm[i, j])}\n{share[i, j]:.0%}" if len(class_names) <= 2 else f"{int(cm[i, j])}"
                ax.text(j, i, text, ha="center", va="center", fontsize=11 if len(class_names) <= 2 else 8,
                        color="white" if share[i, j] > 0.55 else "black")
        ax.set_xticks(range(len(short)), short, rotation=0 if len(class_names) <= 2 else 45,
                      ha="center" if len(class_names) <= 2 else "right")
        ax.set_yticks(range(len(short)), short)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(row.name, color=colour[row.name], fontweight="bold")
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle("Confusion matrices (count, share of the true class)")
    fig.tight_layout()
    return _save(fig, path)


def per_group(rows, numbers: dict, colour: dict[str, str], key: str, labels: dict[str, str], title: str,
              xlabel: str, metric: str, path: Path) -> Path:
    """``metric`` of each row per group (magnification, subtype) with its CI: dots with whiskers, side by side."""
    groups = list(labels)
    fig = Figure(figsize=(max(7.5, 1.2 * len(groups) + 0.5 * len(rows) + 3), 4.6))
    ax = fig.subplots()
    width = 0.8 / max(len(rows), 1)
    lows = [1.0]
    for k, row in enumerate(rows):
        block = numbers[row.name][key]
        cis = numbers[row.name].get("ci", {}).get(key, {}) if key == "per_magnification" else {}
        xs, ys, err = [], [], [[], []]
        for g, group in enumerate(groups):
            values = block.get(group)
            if not values or values.get(metric) is None or np.isnan(values[metric]):
                continue
            ci = values.get("ci") if key != "per_magnification" else cis.get(group, {}).get(metric)
            y = values[metric]
            lo, hi = (ci if ci and ci[0] is not None else (y, y))
            xs.append(g - 0.4 + width * (k + 0.5))
            ys.append(y)
            err[0].append(max(y - lo, 0))
            err[1].append(max(hi - y, 0))
            lows.append(lo)
        ax.errorbar(xs, ys, yerr=err, fmt="D" if row.kind == "ensemble" else "o", color=colour[row.name],
                    label=row.name, capsize=3, markersize=6, linewidth=1.5)
    ax.set_xticks(range(len(groups)), [labels[g] for g in groups], rotation=0 if len(groups) <= 5 else 20,
                  ha="center" if len(groups) <= 5 else "right")
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.set_ylim(max(-0.03, min(lows) - 0.05), 1.03)
    for g in range(1, len(groups)):
        ax.axvline(g - 0.5, color="#ddd", linewidth=0.8)
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    return _save(fig, path)


def per_patient(rows, numbers: dict, colour: dict[str, str], class_names: list[str], path: Path) -> Path:
    """Share of each patient's images classified correctly (rows: patients by class and subtype;
    columns: models), annotated with correct/total."""
    first = numbers[rows[0].name]["per_patient"]
    patients = sorted(first, key=lambda p: (first[p]["label"], first[p]["subtype"], p))
    share = np.array([[numbers[r.name]["per_patient"][p]["share_correct"] for r in rows] for p in patients])
    fig = Figure(figsize=(max(6.5, 1.0 * len(rows) + 4.2), 0.3 * len(patients) + 1.9))
    ax = fig.subplots()
    image = ax.imshow(share, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    for i, p in enumerate(patients):
        for j, row in enumerate(rows):
            cell = numbers[row.name]["per_patient"][p]
            dark = share[i, j] < 0.2 or share[i, j] > 0.85  # the deep red and green ends of RdYlGn
            ax.text(j, i, f"{cell['correct']}/{cell['n_images']}", ha="center", va="center", fontsize=8,
                    color="white" if dark else "black")
    names = {code: name for code, (_, name) in SUBTYPES.items()}
    ax.set_yticks(range(len(patients)), [
        f"{p}  {class_names[first[p]['label']]}, {names.get(first[p]['subtype'], first[p]['subtype']).replace('_', ' ')}"
        for p in patients
    ], fontsize=8)
    ax.set_xticks(range(len(rows)), [r.name for r in rows], rotation=30, ha="right")
    for tick, row in zip(ax.get_xticklabels(), rows, strict=True):
        tick.set_color(colour[row.name])
        tick.set_fontweight("bold")
    ax.set_title("Per patient: images classified correctly")
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02, label="share correct")
    fig.tight_layout()
    return _save(fig, path)
