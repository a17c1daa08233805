"""The Gradio page: upload images (or a zip) or pick examples, then see per image the ensemble's verdict,
each member's probabilities, where each member looked (Grad-CAM) and the input the models saw.

Every answer comes from :class:`histo.predict.Predictor` (the same code and numbers as histo-predict);
the page only arranges it. One request runs at a time (a second one waits in Gradio's queue), and
every failure of a file or a request becomes a message in the page, never a dead server.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import gradio as gr
import numpy as np
import torch

from histo.app import views
from histo.app.uploads import expand
from histo.data.image_file import read_rgb
from histo.predict import PredictError, Predictor
from histo.predict.cams import member_cams
from histo.predict.tta import TTA

log = logging.getLogger("histo.app")

UPLOAD_TYPES = [".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".zip"]
MODELS = "histo-models"  # the concurrency group of every event that runs the models
IMAGE_HEIGHT = 320


class Analysis:
    """The callbacks of one page, around one Predictor shared by every session."""

    def __init__(self, predictor: Predictor, examples: dict[str, Path], cam_method: str, cam_layer: str):
        self.predictor, self.examples = predictor, examples
        self.cam_method, self.cam_layer = cam_method, cam_layer

    def analyse(self, uploads, chosen, tta):
        """Predict the uploads and chosen examples: status, summary table, CSV, image choices and the session state."""
        paths = [str(p) for p in (uploads or [])] + [str(self.examples[name]) for name in (chosen or [])]
        if not paths:
            return (views.problems([]) or "Upload images (or a zip), or choose examples, then press Analyse.",
                    None, None, gr.update(choices=[], value=None), None)
        try:
            workdir = Path(tempfile.mkdtemp(prefix="histo-app-"))
            files, problems = expand(paths, workdir)
            names = _unique([name for _, name in files])
            result = self.predictor.run([path for path, _ in files], tta=tta, num_workers=0)
        except Exception as error:  # the page must answer, whatever happened
            log.exception("Analysis failed")
            return (f'<div class="histo-problems">The analysis failed: {error}</div>', None, None,
                    gr.update(choices=[], value=None), None)
        shown = dict(zip((path for path, _ in files), names, strict=True))
        table = result.table.assign(image=result.table["image"].map(shown))
        problems += [(shown.get(image, Path(image).name), reason) for image, reason in result.skipped.itertuples(index=False)]
        csv = workdir / "predictions.csv"
        table.to_csv(csv, index=False, lineterminator="\n")
        state = {"table": table, "paths": {name: path for path, name in zip(shown, names, strict=True)}}
        status = (f"Analysed {len(table)} image(s) in {result.seconds:.1f} s with {self.predictor.method} of "
                  f"{len(self.predictor.members)} model(s) on {self.predictor.device}"
                  f"{'' if tta == 'none' else f', test-time augmentation {tta}'}.")
        choices = table["image"].tolist()
        return (f"<div>{status}</div>{views.problems(problems)}", views.summary_table(table, self.predictor.class_names),
                str(csv) if len(table) else None, gr.update(choices=choices, value=choices[0] if choices else None),
                state)

    def show(self, name, member, state):
        """One image: verdict, members' bars, the original, the member's input and its Grad-CAM overlay."""
        if not state or not name or name not in state["paths"]:
            return "", "", None, None, None
        try:
            row = state["table"].loc[state["table"]["image"] == name].iloc[0]
            path = state["paths"][name]
            seen = self.predictor.prepare(path)
            chosen = next(m for m in self.predictor.members if m.name == member) if member else self.predictor.members[0]
            images = torch.from_numpy(np.ascontiguousarray(seen[chosen.name].transpose(2, 0, 1)))[None]
            overlays, flat = member_cams(chosen, images, self.cam_method, self.cam_layer)
            original = read_rgb(path)
        except (PredictError, ValueError, RuntimeError) as error:
            log.exception("Showing %s failed", name)
            return f'<div class="histo-problems">Cannot show {name}: {error}</div>', "", None, None, None
        members = self.predictor.member_names
        cam_label = f"{chosen.name}: flat map (no spatial signal)" if flat[0] else f"{self.cam_method} of {chosen.name}"
        return (views.verdict(row, self.predictor.class_names, members, self.predictor.method),
                views.member_bars(row, self.predictor.class_names, members), original,
                gr.update(value=_enlarged(seen[chosen.name]), label=f"Input of {chosen.name}"),
                gr.update(value=_enlarged(overlays[0]), label=cam_label))


def build(predictor: Predictor, examples: dict[str, Path], tta: str = "none", cam_method: str = "gradcam",
          cam_layer: str = "bn2") -> gr.Blocks:
    """The page for ``predictor``; ``examples``: display name -> image file."""
    analysis = Analysis(predictor, examples, cam_method, cam_layer)
    members = predictor.member_names
    with gr.Blocks(title="histo: breast histopathology classifier", analytics_enabled=False) as page:
        title = ("Breast histopathology: benign or malignant?" if predictor.class_names == ["benign", "malignant"]
                 else "Breast histopathology: tumour subtype")
        gr.HTML(f'<h1 class="histo-title">{title}</h1>')
        gr.HTML(f'<div class="histo-notice" id="histo-notice">{views.NOTICE}</div>')
        gr.Markdown(f"Models: {', '.join(members)} (combined by **{predictor.method}**) · classes: "
                    f"{', '.join(predictor.class_names)} · device: {predictor.device}")
        state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                uploads = gr.File(label="Images or a zip (PNG, JPEG, TIFF, BMP)", file_count="multiple",
                                  file_types=UPLOAD_TYPES, elem_id="histo-upload")
                chosen = gr.Dropdown(choices=list(examples), multiselect=True, label="Or examples",
                                     visible=bool(examples), elem_id="histo-examples")
                tta_choice = gr.Radio(list(TTA), value=tta, label="Test-time augmentation (views averaged)")
                run = gr.Button("Analyse", variant="primary", elem_id="histo-analyse")
                status = gr.HTML(elem_id="histo-status")
            with gr.Column(scale=2):
                image = gr.Dropdown(label="Image", choices=[], elem_id="histo-image")
                verdict = gr.HTML(elem_id="histo-verdict")
                bars = gr.HTML(elem_id="histo-bars")
                member = gr.Radio(members, value=members[0], label="Grad-CAM of", elem_id="histo-member")
                with gr.Row():
                    original = gr.Image(label="Uploaded", interactive=False, height=IMAGE_HEIGHT,
                                        elem_id="histo-original")
                    seen = gr.Image(label="Model input", interactive=False, height=IMAGE_HEIGHT,
                                    elem_id="histo-input")
                    cam = gr.Image(label="Grad-CAM", interactive=False, height=IMAGE_HEIGHT, elem_id="histo-cam")
        table = gr.Dataframe(label="All images", interactive=False, elem_id="histo-table")
        download = gr.DownloadButton("Download predictions.csv (as histo-predict writes it)", elem_id="histo-download")
        # every event uses the one shared model: one concurrency group, so requests queue instead of interleaving
        shown = dict(fn=analysis.show, inputs=[image, member, state], outputs=[verdict, bars, original, seen, cam],
                     concurrency_id=MODELS, concurrency_limit=1)
        run.click(analysis.analyse, [uploads, chosen, tta_choice], [status, table, download, image, state],
                  concurrency_id=MODELS, concurrency_limit=1).then(**shown)
        image.input(**shown)  # a choice by the user (an analysis sets the image itself, then shows it)
        member.input(**shown)
    return page


def _enlarged(image: np.ndarray) -> np.ndarray:
    """A small model input shown at least IMAGE_HEIGHT pixels high, pixels kept sharp (nearest neighbour)."""
    factor = max(1, IMAGE_HEIGHT // image.shape[0])
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1) if factor > 1 else image


def _unique(names: list[str]) -> list[str]:
    """Display names made unique (``a.png``, ``a.png (2)``) so that each can be chosen."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return out
