"""index.html of an explain output: one row per image linking its montage and overlays.

Self-contained apart from the PNGs it links with relative paths: no server, no internet, no scripts.
"""

from __future__ import annotations

import html
from pathlib import Path

from histo.explain.montage import fmt_prob

STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px;margin:0 0 8px} p,li{font-size:14px;line-height:1.45}
table{border-collapse:collapse;font-size:13px;margin-top:12px} th,td{border:1px solid #ccc;padding:4px 8px;vertical-align:top}
th{background:#f1f1f1;text-align:left} td.num{text-align:right;font-variant-numeric:tabular-nums}
.wrong{color:#d73027;font-weight:600} .right{color:#1a9850} img.thumb{width:360px;border:1px solid #ddd}
code{background:#f4f4f4;padding:0 3px} .small{font-size:12px;color:#555}
"""


def write_index(out: Path, manifest: dict) -> Path:
    """Write ``out/index.html`` from an explain manifest (see :mod:`histo.explain.stage`)."""
    names = manifest["class_names"]
    runs = manifest["runs"]
    target = ("each model's own predicted class" if manifest["target"] == "predicted" else "the true class")
    if manifest["method"] in ("eigencam",):
        target += " (EigenCAM is class-agnostic: the first principal component of the activations)"
    head = [
        f"<h1>Grad-CAM: {len(manifest['images'])} image{'s' if len(manifest['images']) != 1 else ''}, "
        f"{len(runs)} model{'s' if len(runs) != 1 else ''}</h1>",
        "<ul>",
        f"<li><b>Images</b>: {html.escape(manifest['selection'])}</li>",
        f"<li><b>Maps</b>: {html.escape(manifest['method'])} at layer <code>{html.escape(manifest['layer'])}</code>, "
        f"explaining {html.escape(target)}; each map is scaled to [0, 1] per model and image (JET: blue low, red high); "
        "a flat map (no spatial variation, e.g. a zero gradient) is drawn as zeros and marked.</li>",
        "<li><b>Inputs</b>: each run's own evaluation input (its image size, interpolation and stain normalization).</li>",
        "<li><b>Probabilities</b>: softmax of each model's logits on that input; the ensemble is their unweighted mean.</li>",
        "<li><b>Models</b>: " + ", ".join(
            f"{html.escape(r['label'])} (<code>{html.escape(r['path'])}</code>)" for r in runs) + "</li>",
        "</ul>",
    ]
    header = ["montage", "image", "true", "ensemble", *(f"mean P({html.escape(n)})" for n in names),
              "models wrong", "overlays"]
    rows = []
    for entry in manifest["images"]:
        right = entry["ensemble_pred"] == entry["true_class"]
        wrong = entry["wrong"]
        overlays = " ".join(
            f'<a href="{html.escape(path)}">{html.escape(_label(runs, name))}</a>' for name, path in entry["overlays"].items()
        )
        rows.append("<tr>" + "".join([
            f'<td><a href="{html.escape(entry["montage"])}"><img class="thumb" src="{html.escape(entry["montage"])}" '
            f'alt="montage of {html.escape(entry["image"])}"></a></td>',
            f'<td><b>{html.escape(Path(entry["image"]).name)}</b><br><span class="small">patient {html.escape(entry["patient"])}, '
            f'{html.escape(entry["subtype"])}, {entry["magnification"]}x, {html.escape(entry["split"])}</span></td>',
            f"<td>{html.escape(entry['true_class'])}</td>",
            f'<td class="{"right" if right else "wrong"}">{html.escape(entry["ensemble_pred"])}</td>',
            *(f'<td class="num">{fmt_prob(p)}</td>' for p in entry["mean"]),
            f'<td>{len(wrong)}/{len(runs)}{": " + html.escape(", ".join(_label(runs, w) for w in wrong)) if wrong else ""}</td>',
            f"<td>{overlays}</td>",
        ]) + "</tr>")
    body = "\n".join([
        *head,
        "<table><thead><tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr></thead><tbody>",
        *rows,
        "</tbody></table>",
        '<p class="small">Written by histo-explain; details in <a href="explain.json">explain.json</a>.</p>',
    ])
    page = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Grad-CAM</title>"
            f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n")
    path = out / "index.html"
    path.write_text(page)
    return path


def _label(runs: list[dict], name: str) -> str:
    return next((r["label"] for r in runs if r["name"] == name), name)
