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
PAGE_PX = 1200  # the report's content width: every figure is at most this wide, so it shows 1:1 at 1280 px
PAGE_INCHES = PAGE_PX / DPI - 0.2  # a figure's width in inches, leaving room for bbox_inches="tight" padding
mpl.rcParams.update({"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 9})
MARKERS_UP_TO = 15  # epochs: a marker on every point of a learning curve up to this many, plain lines beyond
DODGE_UP_TO = 5  # epochs: runs are spread side by side around each epoch up to this many (few points overlap)


def colours(names: list[str]) -> dict[str, str]:
    """One colour per row, in row order: tab10's ten strong colours first, then the shades of tab20b and
    tab20c, darkest first (fifty distinct colours; pale ones only past thirty rows)."""
    palette = list(mpl.colormaps["tab10"].colors) + [
        mpl.colormaps[cmap].colors[4 * hue + shade] for shade in range(4) for cmap in ("tab20b", "tab20c")
        for hue in range(5)]
    return {name: mpl.colors.to_hex(palette[i % len(palette)]) for i, name in enumerate(names)}


def _style(kind: str) -> dict:
    return {"linestyle": "--", "linewidth": 2.0} if kind == "ensemble" else {"linestyle": "-", "linewidth": 1.7}


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, facecolor="white", bbox_inches="tight")
    return path


def _legend_below(fig: Figure, handles, ncol_max: int = 4) -> None:
    """A legend under the axes, in as many columns as fit the page: it never covers a curve."""
    longest = max(len(h.get_label()) for h in handles)
    fit = int(PAGE_INCHES // (0.07 * longest + 0.75))  # inches per column: its text (9 pt) and the line sample
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), frameon=False,
               ncol=max(1, min(ncol_max, len(handles), fit)))


def read_curves(path: Path) -> pd.DataFrame | None:
    """Per-epoch means of a Lightning CSV log (``csv/metrics.csv``), indexed by Lightning's epoch (from 0, as
    in the checkpoint names ``best-epochNNN``); None if absent."""
    if path is None or not path.is_file():
        return None
    # logs written before the epoch metrics took the registry's names said acc and balanced_acc
    log = pd.read_csv(path).rename(columns=lambda c: re.sub(r"/(balanced_)?acc$", r"/\1accuracy", c))
    if "epoch" not in log.columns:
        return None
    return log.drop(columns=[c for c in ("step",) if c in log.columns]).groupby("epoch").mean()


def best_epoch(record: dict, curves: pd.DataFrame) -> int | None:
    """The epoch (from 0) of the checkpoint the predictions came from: from its file name, else max val/accuracy."""
    match = re.search(r"epoch[=_-]?(\d+)", str(record.get("checkpoint") or ""))
    if match:
        return int(match.group(1))
    if "val/accuracy" in curves and curves["val/accuracy"].notna().any():
        return int(curves["val/accuracy"].idxmax())
    return None


def epoch_offsets(n_runs: int, epochs: int) -> np.ndarray:
    """Horizontal offset of each run's points: side by side within +-0.3 of the epoch when there are few
    epochs (else one run's single point hides the others'), none for longer runs.

    >>> epoch_offsets(3, 1).round(2).tolist(), epoch_offsets(3, 40).tolist(), epoch_offsets(1, 1).tolist()
    ([-0.15, 0.0, 0.15], [0.0, 0.0, 0.0], [0.0])
    """
    if epochs > DODGE_UP_TO or n_runs == 1:
        return np.zeros(n_runs)
    return np.linspace(-0.3, 0.3, n_runs + 2)[1:-1] if n_runs > 2 else np.linspace(-0.15, 0.15, n_runs)


def learning_curves(curves: dict[str, tuple[pd.DataFrame, int | None]], colour: dict[str, str], path: Path) -> Path | None:
    """Loss and accuracy per epoch (from 0), val solid with filled dots and train dotted with open dots, a star
    behind the point of the checkpoint used; readable for one epoch (runs side by side) and for forty."""
    curves = {k: v for k, v in curves.items() if v[0] is not None and len(v[0])}
    if not curves:
        return None
    first = min(int(f.index.min()) for f, _ in curves.values())
    last = max(int(f.index.max()) for f, _ in curves.values())
    epochs = last - first + 1
    offsets = dict(zip(curves, epoch_offsets(len(curves), epochs), strict=True))
    marker = epochs <= MARKERS_UP_TO
    fig = Figure(figsize=(PAGE_INCHES, 4.0))
    axes = fig.subplots(1, 2)
    for ax, metric, title in ((axes[0], "loss", "Loss (cross-entropy)"), (axes[1], "accuracy", "Accuracy")):
        for name, (frame, best) in curves.items():
            for split, style in (("train", ":"), ("val", "-")):
                column = f"{split}/{metric}"
                if column not in frame or not frame[column].notna().any():
                    continue
                series = frame[column].dropna()
                ax.plot(series.index + offsets[name], series.values, style, color=colour[name], linewidth=1.6,
                        marker="o" if marker else None, markersize=5, zorder=3,
                        markerfacecolor=colour[name] if split == "val" else "white", markeredgecolor=colour[name])
            if best is not None and f"val/{metric}" in frame and best in frame.index:
                ax.plot([best + offsets[name]], [frame.loc[best, f"val/{metric}"]], "*", color=colour[name],
                        markersize=17, markeredgecolor="black", markeredgewidth=0.6, alpha=0.55, zorder=2)
        ax.set_title(title)
        ax.set_xlabel("epoch (from 0, as in the checkpoint names)")
        ax.set_ylabel(metric if metric == "loss" else "accuracy")
        ax.grid(alpha=0.3)
        if epochs <= DODGE_UP_TO:  # one tick per epoch, the runs side by side around it
            ax.set_xlim(first - 0.5, last + 0.5)
            ax.set_xticks(range(first, last + 1))
        else:
            ax.set_xlim(first - 0.02 * epochs, last + 0.02 * epochs)
            ax.xaxis.set_major_locator(mpl.ticker.MaxNLocator(integer=True))
    handles = [mpl.lines.Line2D([], [], color=colour[n], linewidth=2.5, label=n) for n in curves]
    handles += [mpl.lines.Line2D([], [], color="grey", linestyle="-", marker="o" if marker else None, label="val"),
                mpl.lines.Line2D([], [], color="grey", linestyle=":", marker="o" if marker else None,
                                 markerfacecolor="white", label="train"),
                mpl.lines.Line2D([], [], color="grey", marker="*", linestyle="", markersize=12,
                                 markeredgecolor="black", label="checkpoint used (val)")]
    _legend_below(fig, handles, ncol_max=7)
    fig.suptitle(f"Learning curves: {len(curves)} run{'s' if len(curves) != 1 else ''}, "
                 f"{epochs} epoch{'s' if epochs != 1 else ''} (from each run's csv/metrics.csv)")
    fig.tight_layout()
    return _save(fig, path)


def identical_curves(rows, numbers: dict) -> dict[str, list[str]]:
    """Row name -> the rows (in row order, itself included) whose ROC curve is exactly the same as its own."""
    clusters: list[list[str]] = []
    for row in rows:
        roc = numbers[row.name]["roc"]
        cluster = next((c for c in clusters if np.array_equal(numbers[c[0]]["roc"]["fpr"], roc["fpr"])
                        and np.array_equal(numbers[c[0]]["roc"]["tpr"], roc["tpr"])), None)
        if cluster is None:
            clusters.append([row.name])
        else:
            cluster.append(row.name)
    return {name: cluster for cluster in clusters for name in cluster}


def roc_groups(rows) -> list[tuple[str, list]]:
    """The panels of the ROC figure: one for up to eight rows, else one for the single models and one per
    ensemble output (its methods), so no panel holds more than about ten curves."""
    if len(rows) <= 8:
        return [("", list(rows))]
    groups: dict[str, list] = {}
    for row in rows:
        key = "single models" if row.kind == "model" else f"ensemble {row.source.name}"
        groups.setdefault(key, []).append(row)
    return list(groups.items())


def roc_curves(rows, numbers: dict, colour: dict[str, str], positive: str, path: Path) -> Path | None:
    """ROC curves with their AUROC, the legend beside the axes (never over a curve). When every curve is good
    (AUROC >= 0.9) but not all perfect, a zoom on the top-left corner beside each panel. More than eight rows:
    one panel row per group (:func:`roc_groups`). Curves identical to an earlier one are drawn interleaved
    with it (alternating dashes of both colours) and labelled as such."""
    rows = [r for r in rows if "roc" in numbers[r.name]]
    if not rows:
        return None
    aurocs = {r.name: numbers[r.name]["overall"]["auroc"] for r in rows}
    zoomed = 0.9 <= min(aurocs.values()) < 1.0  # nothing to see in the corner of perfect curves
    groups = roc_groups(rows)
    same = identical_curves(rows, numbers)
    ncols = 2 if zoomed else 1
    panel, legend = 3.2, 3.9  # inches: a square axes, the legend column beside it
    fig = Figure(figsize=(ncols * panel + legend, 3.5 * len(groups)))
    grid = fig.add_gridspec(len(groups), ncols + 1, width_ratios=[panel] * ncols + [legend])
    for g, (title, group) in enumerate(groups):
        axes = [fig.add_subplot(grid[g, c]) for c in range(ncols)]
        corner = 1.0
        handles = []
        names = {r.name for r in group}
        for row in group:
            roc = numbers[row.name]["roc"]
            ci = numbers[row.name].get("ci", {}).get("overall", {}).get("auroc")
            label = f"{row.name}: {aurocs[row.name]:.3f}" + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci and ci[0] is not None else "")
            style = _style(row.kind)
            handles.append(mpl.lines.Line2D([], [], color=colour[row.name], **style))
            twins = [n for n in same[row.name] if n in names]
            if len(twins) > 1:  # identical curves: equal dashes, shifted, so every colour shows along the line
                k = twins.index(row.name)
                style = {"linestyle": (4 * k, (4, 4 * (len(twins) - 1))), "linewidth": 2.2}
                label += f"\n    same curve as {twins[0]}" if k else ""
            handles[-1].set_label(label)
            for ax in axes:
                ax.plot(roc["fpr"], roc["tpr"], color=colour[row.name], drawstyle="steps-post", **style)
            fpr, tpr = np.asarray(roc["fpr"]), np.asarray(roc["tpr"])
            corner = min(corner, tpr[fpr <= 0.2].max())
        axes[0].plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle=":")
        axes[0].set_xlim(-0.01, 1.01)
        axes[0].set_ylim(-0.01, 1.01)
        axes[0].set_title(f"ROC, {title}" if title else "ROC curve")
        if zoomed:
            axes[1].set_xlim(-0.004, 0.2)
            axes[1].set_ylim(max(0.0, np.floor((corner - 0.02) * 20) / 20), 1.004)
            axes[1].set_title("zoom on the top-left corner")
        for ax in axes:
            ax.set_xlabel("false-positive rate (1 - specificity)")
            ax.set_ylabel(f"true-positive rate ({positive})")
            ax.grid(alpha=0.3)
            ax.set_box_aspect(1)
        legend_ax = fig.add_subplot(grid[g, ncols])
        legend_ax.axis("off")
        legend_ax.legend(handles=handles, loc="center left", frameon=False, fontsize=8.5,
                         title="AUROC (CI)" if any("(" in h.get_label() for h in handles) else "AUROC",
                         title_fontsize=9, alignment="left")
    fig.tight_layout()
    return _save(fig, path)


def confusion_matrices(rows, numbers: dict, colour: dict[str, str], class_names: list[str], path: Path) -> Path:
    """One confusion matrix per row: counts and the share of each true class (the colour)."""
    n = len(rows)
    binary = len(class_names) <= 2
    cols = min(n, 4 if binary else 2)
    nrows = int(np.ceil(n / cols))
    side = 1.9 if binary else 4.4
    fig = Figure(figsize=(min(PAGE_INCHES, cols * (side + 0.75)), nrows * (side + 0.6) + 0.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, cols)).ravel()
    short = [c.replace("_", " ") for c in class_names]
    for ax, row in zip(axes, rows, strict=False):
        cm = np.asarray(numbers[row.name]["confusion"], dtype=float)
        share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                text = f"{int(cm[i, j])}\n{share[i, j]:.0%}" if binary else f"{int(cm[i, j])}"
                ax.text(j, i, text, ha="center", va="center", fontsize=10 if binary else 8,
                        color="white" if share[i, j] > 0.55 else "black")
        ax.set_xticks(range(len(short)), short, rotation=0 if binary else 45, ha="center" if binary else "right")
        ax.set_yticks(range(len(short)), short, rotation=90 if binary else 0, va="center")
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(row.name, color=colour[row.name], fontweight="bold", fontsize=10)
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle("Confusion matrices (count, share of the true class)")
    return _save(fig, path)


def per_group(rows, numbers: dict, colour: dict[str, str], key: str, labels: dict[str, str], title: str,
              metric: str, path: Path) -> Path:
    """``metric`` of each row per group (magnification, subtype) with its CI: one panel per group (four to a
    line), one line per row in every panel (a forest plot), so it reads the same for 2 rows and for 30."""
    groups = list(labels)
    ncols = min(len(groups), 4)
    nrows = int(np.ceil(len(groups) / ncols))
    fig = Figure(figsize=(PAGE_INCHES, nrows * (0.22 * len(rows) + 1.15) + 0.5), layout="constrained")
    axes = fig.subplots(nrows, ncols, sharey=True, sharex=True, squeeze=False).ravel()
    lows = [1.0]
    for ax, group in zip(axes, groups, strict=False):
        for k, row in enumerate(rows):
            values = numbers[row.name][key].get(group)
            if not values or values.get(metric) is None or np.isnan(values[metric]):
                continue
            ci = (numbers[row.name].get("ci", {}).get(key, {}).get(group, {}).get(metric) if key == "per_magnification"
                  else values.get("ci"))
            y = values[metric]
            lo, hi = ci if ci and ci[0] is not None else (y, y)
            lows.append(lo)
            ax.errorbar([y], [k], xerr=[[max(y - lo, 0)], [max(hi - y, 0)]], fmt="D" if row.kind == "ensemble" else "o",
                        color=colour[row.name], capsize=2.5, markersize=5, linewidth=1.3)
        ax.set_title(labels[group], fontsize=9.5)
        ax.grid(axis="x", alpha=0.3)
    for ax in axes[len(groups):]:
        ax.set_visible(False)
    axes[0].set_ylim(len(rows) - 0.5, -0.5)  # first row on top
    axes[0].set_xlim(max(-0.03, min(lows) - 0.05), 1.03)
    for ax in axes[::ncols]:
        ax.set_yticks(range(len(rows)), [r.name for r in rows], fontsize=8.5 if len(rows) > 12 else 9.5)
        for tick, row in zip(ax.get_yticklabels(), rows, strict=True):
            tick.set_color(colour[row.name])
    fig.supxlabel(metric.replace("_", " "), fontsize=10)
    fig.suptitle(title)
    return _save(fig, path)


def per_patient(rows, numbers: dict, colour: dict[str, str], class_names: list[str], path: Path) -> Path:
    """Share of each patient's images classified correctly (rows: patients by class and subtype; columns:
    models), annotated with correct/total while the cells are wide enough to read it."""
    first = numbers[rows[0].name]["per_patient"]
    patients = sorted(first, key=lambda p: (first[p]["label"], first[p]["subtype"], p))
    share = np.array([[numbers[r.name]["per_patient"][p]["share_correct"] for r in rows] for p in patients])
    cell = min(0.6, 6.2 / len(rows))  # inches per column: the figure stays within the page
    annotate = cell >= 0.42
    height = 0.28 if len(patients) <= 40 else 0.2
    fig = Figure(figsize=(len(rows) * cell + 4.4, height * len(patients) + 2.2))
    ax = fig.subplots()
    image = ax.imshow(share, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    for i, p in enumerate(patients):
        for j, row in enumerate(rows if annotate else []):
            counts = numbers[row.name]["per_patient"][p]
            dark = share[i, j] < 0.2 or share[i, j] > 0.85  # the deep red and green ends of RdYlGn
            ax.text(j, i, f"{counts['correct']}/{counts['n_images']}", ha="center", va="center", fontsize=8,
                    color="white" if dark else "black")
    names = {code: name for code, (_, name) in SUBTYPES.items()}
    ax.set_yticks(range(len(patients)), [
        f"{p}  {class_names[first[p]['label']]}, {names.get(first[p]['subtype'], first[p]['subtype']).replace('_', ' ')}"
        for p in patients
    ], fontsize=8)
    ax.set_xticks(range(len(rows)), [r.name for r in rows], rotation=35 if annotate else 90,
                  ha="right" if annotate else "center", fontsize=9 if annotate else 8)
    for tick, row in zip(ax.get_xticklabels(), rows, strict=True):
        tick.set_color(colour[row.name])
        tick.set_fontweight("bold")
    ax.set_title("Per patient: share of images classified correctly")
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02, label="share correct")
    fig.tight_layout()
    return _save(fig, path)
