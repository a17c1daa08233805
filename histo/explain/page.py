"""index.html of an explain output: one block per image, its montage at full size (readable without a click)
under what the models said, with links to each model's overlay.

Self-contained apart from the PNGs it links with relative paths: no server, no internet, no scripts.
"""

from __future__ import annotations

import html
from pathlib import Path

from histo.evaluation.table_format import fmt_prob

STYLE = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;margin:0 auto;padding:20px;color:#222;max-width:1560px}
h1{font-size:22px;margin:0 0 8px} p,li{font-size:14px;line-height:1.45;overflow-wrap:anywhere}
.image{border:1px solid #ddd;border-radius:6px;padding:10px 12px;margin:14px 0}
.facts{font-size:13.5px;line-height:1.5} .facts .num{font-variant-numeric:tabular-nums}
.wrong{color:#d73027;font-weight:600} .right{color:#1a9850} .flat{color:#8a6d00}
img.montage{display:block;max-width:100%;height:auto;margin-top:8px;border:1px solid #eee}
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
        "a flat map (no spatial variation, e.g. a zero gradient) carries nothing to draw: its tile shows the input "
        "greyed, labelled <i>flat map</i>.</li>",
        "<li><b>Inputs</b>: each run's own evaluation input (its image size, interpolation and stain normalization).</li>",
        "<li><b>Probabilities</b>: softmax of each model's logits on that input; the ensemble is their unweighted mean.</li>",
        "<li><b>Models</b>: " + ", ".join(
            f"{html.escape(r['label'])} (<code>{html.escape(r['path'])}</code>)" for r in runs) + "</li>",
        "</ul>",
    ]
    cards = []
    for entry in manifest["images"]:
        right = entry["ensemble_pred"] == entry["true_class"]
        wrong = entry["wrong"]
        flat = [name for name, is_flat in entry.get("flat", {}).items() if is_flat]
        overlays = " ".join(
            f'<a href="{html.escape(path)}">{html.escape(_label(runs, name))}</a>' for name, path in entry["overlays"].items()
        )
        mean = ", ".join(f"P({html.escape(n)}) {fmt_prob(p)}" for n, p in zip(names, entry["mean"], strict=True))
        cards.append(
            f'<div class="image" id="{html.escape(entry["stem"])}"><div class="facts">'
            f'<b>{html.escape(Path(entry["image"]).name)}</b> <span class="small">patient {html.escape(entry["patient"])}, '
            f'{html.escape(entry["subtype"])}, {entry["magnification"]}x, {html.escape(entry["split"])}</span><br>'
            f'true <b>{html.escape(entry["true_class"])}</b>; mean of the models: '
            f'<span class="{"right" if right else "wrong"}">{html.escape(entry["ensemble_pred"])}</span> '
            f'(<span class="num">{mean}</span>); models wrong: {len(wrong)}/{len(runs)}'
            + (": " + html.escape(", ".join(_label(runs, w) for w in wrong)) if wrong else "")
            + (f'; <span class="flat">flat map (nothing drawn): {html.escape(", ".join(_label(runs, f) for f in flat))}'
               "</span>" if flat else "")
            + f'<br><span class="small">overlays: {overlays}</span></div>'
            f'<a href="{html.escape(entry["montage"])}"><img class="montage" src="{html.escape(entry["montage"])}" '
            f'alt="montage of {html.escape(entry["image"])}"></a></div>'
        )
    body = "\n".join([
        *head,
        *cards,
        '<p class="small">Written by histo-explain; details in <a href="explain.json">explain.json</a>.</p>',
    ])
    page = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Grad-CAM</title>"
            f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n")
    path = out / "index.html"
    path.write_text(page)
    return path


def _label(runs: list[dict], name: str) -> str:
    return next((r["label"] for r in runs if r["name"] == name), name)
