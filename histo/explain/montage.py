"""Pictures: a CAM overlaid on its input image, and the montage of one image across all models.

The montage puts one tile per model at a common display size, one row per family (V1, V2) when both
are given, as the paper's 2x5 panels; each tile says the model's probability of the predicted and of
the true class, with a green (right) or red (wrong) frame. The title states the image, its true
label, the ensemble mean, the CAM method and which class the maps explain.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import cv2
import matplotlib as mpl
import numpy as np
from matplotlib.figure import Figure
from PIL import Image
from pytorch_grad_cam.utils.image import show_cam_on_image

from histo.evaluation.table_format import fmt_prob

IMAGE_WEIGHT = 0.5  # share of the image in an overlay (the rest is the JET heatmap)
RIGHT, WRONG = "#1a9850", "#d73027"


def overlay(image: np.ndarray, cam: np.ndarray, image_weight: float = IMAGE_WEIGHT, flat: bool = False) -> np.ndarray:
    """uint8 RGB (H, W, 3) with a [0, 1] map (H, W) drawn on it as a JET heatmap (red = high). A ``flat`` map
    (no spatial signal) is not drawn: the image is greyed instead, so no uniform wash passes for a heatmap."""
    if cam.shape != image.shape[:2]:
        raise ValueError(f"CAM {cam.shape} and image {image.shape[:2]} differ in size.")
    if flat:
        grey = image.astype(np.float32).mean(axis=2, keepdims=True)
        return np.repeat(0.4 * grey + 0.6 * 255, 3, axis=2).round().astype(np.uint8)
    return show_cam_on_image(image.astype(np.float32) / 255.0, cam.astype(np.float32), use_rgb=True,
                             colormap=cv2.COLORMAP_JET, image_weight=image_weight)


def save_png(image: np.ndarray, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


@dataclass
class Tile:
    """One model's panel: its overlay and what it said about the image."""

    label: str  # e.g. V1-B0
    family: str | None
    overlay: np.ndarray  # uint8 (H, W, 3)
    input: np.ndarray  # uint8 (H, W, 3): the model's evaluation input
    probs: np.ndarray  # (C,)
    flat: bool
    input_note: str = ""  # how the input was made, beyond its size (e.g. "Macenko stain")


def render_montage(
    path: str | Path,
    tiles: list[Tile],
    label: int,
    class_names: list[str],
    title: str,
    method_line: str,
    tile_inches: float = 1.4,
    dpi: int = 110,
) -> Path:
    """Write the montage of one image: the evaluation input, then one tile per model, rows by family.

    The input is shown at the start of the first row, and again at the start of a later row when that
    row's models see it differently (another size or stain normalization). The layout is in inches (every tile the same display size, whatever the model's input size): a
    heading, then per row a tile title, the square image and up to three lines of text under it.
    """
    rows = _rows(tiles)
    ncols = max(len(r) for r in rows) + 1
    mean = np.mean([t.probs for t in tiles], axis=0)
    pred = int(mean.argmax())
    verdict = "right" if pred == label else "WRONG"
    mean_line = (f"mean of {len(tiles)} model{'s' if len(tiles) > 1 else ''}: pred {class_names[pred]} "
                 f"{fmt_prob(mean[pred])}, true {class_names[label]} {fmt_prob(mean[label])}  ->  {verdict}")
    # inches: between tiles, tile title, text under, colour bar. Ten models (2 x 5 and the input) make a montage
    # 10.9 in (1,200 px) wide: shown 1:1 in a 1280 px window, its text stays readable
    gap, above, below, bar = 0.2, 0.3, 0.72, 0.15
    grid_width = ncols * tile_inches + (ncols - 1) * gap + 0.25 + bar + 0.8
    width = max(grid_width + 0.3, 7.0)
    chars = int(width * 72 / (10.5 * 0.58))  # characters of the heading font per line
    heading = [line for part in (*title.split("\n"), mean_line, method_line)
               for line in textwrap.wrap(part, chars, break_on_hyphens=False)]
    head = 0.22 * len(heading) + 0.25
    row_height = above + tile_inches + below
    height = head + len(rows) * row_height
    left = (width - grid_width) / 2
    fig = Figure(figsize=(width, height), dpi=dpi)

    def axes(r: int, c: int):
        bottom = height - head - r * row_height - above - tile_inches
        x = left + c * (tile_inches + gap)
        return fig.add_axes((x / width, bottom / height, tile_inches / width, tile_inches / height))

    shown = None
    for r, row in enumerate(rows):
        if shown is None or not np.array_equal(shown, row[0].input):
            shown = row[0].input
            ax = axes(r, 0)
            ax.imshow(shown)
            _frame(ax, None)
            ax.set_title("input", fontsize=10, fontweight="bold")
            note = f", {row[0].input_note}" if row[0].input_note else ""
            ax.set_xlabel(f"{shown.shape[0]} px{note},\nas {row[0].label} sees it", fontsize=8.5, linespacing=1.3)
        for c, tile in enumerate(row):
            ax = axes(r, c + 1)
            ax.imshow(tile.overlay)
            p = int(tile.probs.argmax())
            colour = RIGHT if p == label else WRONG
            _frame(ax, colour)
            ax.set_title(tile.label, fontsize=10, fontweight="bold", color=colour)
            if tile.flat:
                ax.text(0.5, 0.5, "flat map:\nno spatial\nsignal", transform=ax.transAxes, ha="center", va="center",
                        fontsize=9.5, color="#333", bbox={"facecolor": "white", "edgecolor": "#999", "alpha": 0.9})
            lines = [f"pred {class_names[p]}: {fmt_prob(tile.probs[p])}",
                     f"true {class_names[label]}: {fmt_prob(tile.probs[label])}"]
            ax.set_xlabel("\n".join(lines), fontsize=8.5, linespacing=1.3)
    top = height - head - above
    bottom = height - head - (len(rows) - 1) * row_height - above - tile_inches
    x = left + ncols * tile_inches + (ncols - 1) * gap + 0.25
    cax = fig.add_axes((x / width, bottom / height, bar / width, (top - bottom) / height))
    fig.colorbar(mpl.cm.ScalarMappable(norm=mpl.colors.Normalize(0, 1), cmap="jet"), cax=cax)
    cax.set_ylabel("CAM, scaled per model (0 low, 1 high)", fontsize=8)
    cax.tick_params(labelsize=7)
    fig.suptitle("\n".join(heading), fontsize=10.5, y=1 - 0.1 / height, va="top", linespacing=1.4)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    layout = {"Tiles": str(len(tiles)), "Rows": ",".join(str(len(r)) for r in rows)}  # PNG text: what was drawn
    fig.savefig(path, dpi=dpi, facecolor="white", metadata=layout)
    return path


def _rows(tiles: list[Tile]) -> list[list[Tile]]:
    """One row per family in the given (display) order; a single row when there is one family."""
    rows: dict = {}
    for tile in tiles:
        rows.setdefault(tile.family, []).append(tile)
    return list(rows.values())


def _frame(ax, colour: str | None) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(colour is not None)
        if colour:
            spine.set_edgecolor(colour)
            spine.set_linewidth(3)
