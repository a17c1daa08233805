"""The report as one self-contained HTML page (PNGs embedded as data URIs, inline CSS, no scripts) and
as markdown (linking the PNG files beside it). Both are rendered from the same :class:`Report`."""

from __future__ import annotations

import base64
import html
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from PIL import Image

from histo.evaluation.table_format import COLUMNS, errors, fmt_prob, interval, number, paper_cells, rank_value
from histo.report.gallery import Thumb
from histo.report.plots import PAGE_PX

MONTAGE_WIDTH = 1200  # px: a montage wider than this is embedded shrunk (as a JPEG, to keep report.html small)
MIN_PICTURE_PX = 96  # a gallery picture smaller than this is shown enlarged, with visible pixels
# The page is PAGE_PX (histo.report.plots) wide plus padding: every figure shows 1:1 at a 1280 px window and
# every table fits it (the metrics table, paper columns included, at 28 rows: tests/test_pages.py checks it).
STYLE = f"""
*{{box-sizing:border-box}}
body{{font-family:system-ui,-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;margin:0 auto;padding:20px;color:#222;max-width:{PAGE_PX + 40}px;line-height:1.45}}
h1{{font-size:26px;margin:0 0 6px}} h2{{font-size:20px;margin:34px 0 8px;border-bottom:2px solid #eee;padding-bottom:4px}}
p,li{{font-size:14px;overflow-wrap:anywhere}} .note{{font-size:13px;color:#555}} .warn{{background:#fff4e5;border-left:4px solid #f0a020;padding:8px 12px;font-size:14px}}
table{{border-collapse:collapse;font-size:12.5px;margin:8px 0}} th,td{{border:1px solid #d6d6d6;padding:3px 5px;vertical-align:top}}
th{{background:#f3f3f3;text-align:left;font-size:12px;line-height:1.25;position:sticky;top:0}} td.name{{white-space:nowrap}}
td.num{{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}}
td.num small{{color:#777;font-size:10.5px;display:block}} td.kind{{color:#555;font-size:11.5px}}
.swatch{{display:inline-block;width:11px;height:11px;border-radius:2px;margin-right:5px;vertical-align:-1px}}
figure{{margin:8px 0}} img.plot{{display:block;max-width:100%;height:auto;border:1px solid #eee}} .toc a{{margin-right:14px;font-size:14px}}
.card{{border:1px solid #ddd;border-radius:6px;padding:10px;margin:12px 0;display:flex;flex-wrap:wrap;gap:10px 16px;align-items:flex-start}}
.pics{{display:flex;gap:8px;align-items:flex-start}} .pics figure{{margin:0}} .pics img{{display:block;border:1px solid #ccc}}
.pics figcaption{{font-size:11px;color:#666;line-height:1.3;margin-top:2px}} img.pixels{{image-rendering:pixelated}}
.card .meta{{flex:1;min-width:300px;font-size:13.5px}} .card details{{flex-basis:100%}}
.said{{display:grid;grid-template-columns:repeat(auto-fill,minmax(185px,1fr));gap:1px 14px;font-size:12px;margin-top:6px}}
.said span.p{{font-variant-numeric:tabular-nums;color:#555}}
.wrong{{color:#d73027;font-weight:600}} .right{{color:#1a9850}} details summary{{cursor:pointer;color:#225;font-size:14px}}
details img{{display:block;max-width:100%;margin-top:6px;border:1px solid #eee}} code{{background:#f4f4f4;padding:0 3px;font-size:12px}}
"""
SECTIONS = {
    "metrics": "Metrics", "curves": "Learning curves", "roc": "ROC curves", "confusion": "Confusion matrices",
    "magnification": "Per magnification", "subtype": "Per subtype", "patient": "Per patient",
    "gallery": "Misclassified images",
}


@dataclass
class Report:
    """Everything a rendering needs; ``rows`` are dicts with name, kind, colour, source, paper_key, numbers."""

    title: str
    header: list[str]  # sentences about the data and the method
    warnings: list[str]
    rows: list[dict]
    rank_by: str
    split: str  # the split every number is on: test (or val)
    plots: dict[str, Path | None]  # section -> PNG
    plot_notes: dict[str, str]
    gallery: list[dict]
    gallery_note: str
    thumbs: dict[str, Thumb] = field(default_factory=dict)
    montages: dict[str, Path] = field(default_factory=dict)
    paper: pd.DataFrame | None = None
    definitions: list[str] = field(default_factory=list)


def metric_header(report: Report) -> list[str]:
    header = ["#", "model", "kind", *COLUMNS.values(), "ECE", "errors"]
    if report.paper is not None:
        header += ["paper accuracy", "paper bal. acc.", "paper errors"]
    return header


def metric_cells(report: Report, row: dict, rank: int) -> list[tuple[str, str | None]]:
    """(estimate, CI text or None) per column of :func:`metric_header`."""
    overall = row["numbers"]["overall"]
    block_ci = row["numbers"].get("ci", {}).get("overall")
    votes = row["numbers"].get("score") == "vote_share"
    cells = [(str(rank), None), (row["name"], None), (row["kind"], None)]
    for metric in COLUMNS:
        bounds = (block_ci or {}).get(metric)
        cells.append((number(overall.get(metric)) + ("*" if votes and metric == "auroc" else ""),
                      interval(bounds, withheld=bool(block_ci) and bounds is None)))
    cells += [("n/a" if votes else number(overall.get("ece")), None), (f"{errors(overall)}/{overall['n_images']}", None)]
    if report.paper is not None:
        cells += [(cell, None) for cell in paper_cells(report.paper, row["paper_key"])]
    return cells


def ranked(report: Report) -> list[dict]:
    return sorted(report.rows, key=lambda row: rank_value(row["numbers"]["overall"], report.rank_by), reverse=True)


# ----- HTML -----

def to_html(report: Report) -> str:
    parts = [f"<h1>{_e(report.title)}</h1>"]
    parts += [f"<p>{_e(s)}</p>" for s in report.header]
    parts += [f'<p class="warn">{_e(w)}</p>' for w in report.warnings]
    parts.append('<p class="toc">' + "".join(f'<a href="#{k}">{v}</a>' for k, v in SECTIONS.items()) + "</p>")

    parts.append(f'<h2 id="metrics">{SECTIONS["metrics"]}</h2>')
    parts.append(f'<p class="note">Ranked by {_e(COLUMNS.get(report.rank_by, report.rank_by))} on the {_e(report.split)} split, '
                 "best first. Cells: estimate, with its confidence interval beneath.</p>")
    header = metric_header(report)
    lines = ['<table class="metrics"><thead><tr>' + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr></thead><tbody>"]
    for rank, row in enumerate(ranked(report), start=1):
        cells = metric_cells(report, row, rank)
        tds = []
        for k, (value, ci) in enumerate(cells):
            if k == 1:
                tds.append(f'<td class="name"><span class="swatch" style="background:{row["colour"]}"></span>'
                           f"<b>{_e(value)}</b></td>")
            elif k in (0, 2):
                tds.append(f'<td{" class=kind" if k == 2 else ""}>{_e(value)}</td>')
            else:
                tds.append(f'<td class="num">{_e(value)}' + (f"<small>{_e(ci)}</small>" if ci else "") + "</td>")
        lines.append("<tr>" + "".join(tds) + "</tr>")
    lines.append("</tbody></table>")
    parts += lines
    parts += [f'<p class="note">{_e(d)}</p>' for d in report.definitions]

    for key in ("curves", "roc", "confusion", "magnification", "subtype", "patient"):
        parts.append(f'<h2 id="{key}">{SECTIONS[key]}</h2>')
        if report.plot_notes.get(key):
            parts.append(f'<p class="note">{_e(report.plot_notes[key])}</p>')
        if report.plots.get(key):
            parts.append(f'<figure><img class="plot" alt="{_e(SECTIONS[key])}" src="{_data_uri(report.plots[key])}">'
                         "</figure>")

    parts.append(f'<h2 id="gallery">{SECTIONS["gallery"]}</h2>')
    parts.append(f'<p class="note">{_e(report.gallery_note)}</p>')
    for item in report.gallery:
        parts.append(_card(report, item))
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(report.title)}</title>'
            f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n")


def _card(report: Report, item: dict) -> str:
    said = []
    for row in report.rows:
        answer = item["rows"][row["name"]]
        said.append(f'<div><span class="swatch" style="background:{row["colour"]}"></span>{_e(row["name"])}: '
                    f'<span class="{"wrong" if answer["wrong"] else "right"}">{_e(answer["pred"])}</span> '
                    f'<span class="p">{fmt_prob(answer["p_true"])}</span></div>')
    montage = report.montages.get(item["image"])
    cam = (f"<details open><summary>Grad-CAM montage</summary><img alt=\"Grad-CAM montage\" "
           f"src=\"{_data_uri(montage, MONTAGE_WIDTH)}\"></details>") if montage else ""
    return (f'<div class="card">{_pictures(report.thumbs.get(item["image"]), item["image"])}<div class="meta">'
            f'<b>{_e(Path(item["image"]).name)}</b><br>true <b>{_e(item["true_class"])}</b> ({_e(item["subtype"])}), '
            f'patient {_e(item["patient"])}, {item["magnification"]}x; wrong in {item["n_wrong"]} of {len(report.rows)}'
            f'<div class="said">{"".join(said)}</div></div>{cam}</div>')


def _pictures(thumb: Thumb | None, image: str) -> str:
    """The original beside the model's input, at the same height (enlarged with visible pixels when small)."""
    if thumb is None:
        return ""
    with Image.open(thumb.original) as original:
        width, height = original.size
    scale = max(1.0, MIN_PICTURE_PX / height)
    width, height = round(width * scale), round(height * scale)
    stain = "" if thumb.stain in ("none", None) else f", {thumb.stain} stain"
    return (
        '<div class="pics">'
        f'<figure><img{" class=pixels" if scale > 1 else ""} width="{width}" height="{height}" alt="{_e(image)}" '
        f'src="{_data_uri(thumb.original)}"><figcaption>original<br>{thumb.original_size[0]}x{thumb.original_size[1]} px'
        "</figcaption></figure>"
        f'<figure><img class="pixels" width="{height}" height="{height}" alt="model input of {_e(image)}" '
        f'src="{_data_uri(thumb.input)}"><figcaption>model input<br>{thumb.input_size} px{_e(stain)}, '
        f"{_e(thumb.seen_by)}</figcaption></figure></div>"
    )


def _data_uri(path: Path, max_width: int | None = None) -> str:
    """A PNG as a data URI; with ``max_width``, re-encoded as a JPEG at most that wide (montages)."""
    if max_width is None:
        return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")
    image = Image.open(path).convert("RGB")
    if image.width > max_width:
        image = image.resize((max_width, round(image.height * max_width / image.width)), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=88)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# ----- markdown -----

def to_markdown(report: Report, out: Path) -> str:
    lines = [f"# {report.title}", ""]
    lines += [line for sentence in report.header for line in (sentence, "")]
    lines += [f"> **Warning**: {w}" for w in report.warnings]
    lines += ["", f"## {SECTIONS['metrics']}", "",
              f"Ranked by {COLUMNS.get(report.rank_by, report.rank_by)} on {report.split}, best first. "
              "Cells: estimate (confidence interval).", ""]
    header = metric_header(report)
    lines += [_md_line(header), _md_line(["---"] * len(header))]
    for rank, row in enumerate(ranked(report), start=1):
        lines.append(_md_line([v if not ci else f"{v} ({ci})" for v, ci in metric_cells(report, row, rank)]))
    lines += ["", *report.definitions]
    for key in ("curves", "roc", "confusion", "magnification", "subtype", "patient"):
        lines += ["", f"## {SECTIONS[key]}", ""]
        if report.plot_notes.get(key):
            lines += [report.plot_notes[key], ""]
        if report.plots.get(key):
            lines.append(f"![{SECTIONS[key]}]({_rel(report.plots[key], out)})")
    lines += ["", f"## {SECTIONS['gallery']}", "", report.gallery_note, ""]
    if report.gallery:
        names = [r["name"] for r in report.rows]
        header = ["original, model input", "name", "true", *[f"{n}: P(true)" for n in names], "Grad-CAM"]
        lines += [_md_line(header), _md_line(["---"] * len(header))]
        for item in report.gallery:
            thumb = report.thumbs.get(item["image"])
            montage = report.montages.get(item["image"])
            cells = [f"![]({_rel(thumb.original, out)}) ![]({_rel(thumb.input, out)})" if thumb else "",
                     Path(item["image"]).name,
                     f"{item['true_class']} ({item['subtype']})"]
            cells += [("**" if item["rows"][n]["wrong"] else "") + fmt_prob(item["rows"][n]["p_true"])
                      + ("**" if item["rows"][n]["wrong"] else "") for n in names]
            cells.append(f"[montage]({_rel(montage, out)})" if montage else "")
            lines.append(_md_line(cells))
        lines += ["", "Bold: the model classifies the image wrongly."]
    return "\n".join(lines) + "\n"


def _rel(path: Path, out: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), out.resolve())).as_posix()


def _md_line(cells) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def _e(text) -> str:
    return html.escape(str(text))
