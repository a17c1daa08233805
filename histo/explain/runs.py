"""The runs one explain call works on: their models (best checkpoints), evaluation inputs and order.

Runs are shown in the paper's order (V1 B0-B4, then V2 B0, B1, B2, B3, S; anything else after, by
name) and must share a split fingerprint and a dataset root: the same images, labelled the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from histo.evaluation.paper import display_name, order_key
from histo.evaluation.run_dir import RunDir, unique_names
from histo.evaluation.run_inputs import RunInputs, run_inputs
from histo.explain.errors import ExplainError


@dataclass
class ExplainRun:
    """One run to explain: ``name`` is unique among the runs (``model`` or ``model@<run dir name>``)."""

    name: str
    model_name: str
    family: str | None
    inputs: RunInputs
    checkpoint: Path

    @property
    def path(self) -> Path:
        return self.inputs.run

    @property
    def label(self) -> str:
        return display_name(self.model_name) + self.name[len(self.model_name):]

    def load_model(self, device: str = "cpu"):
        """The run's classifier from its best checkpoint, float32, eval mode, on ``device``."""
        from histo.models import load_classifier

        model = load_classifier(self.checkpoint, map_location=device).float().eval()
        size = int(model.hparams.image_size)
        if size != self.inputs.image_size:
            raise ExplainError(
                f"Run {self.path}: checkpoint {self.checkpoint} was built for {size} px but run.json says "
                f"image_size={self.inputs.image_size}; the run directory is inconsistent."
            )
        return model


def load_runs(paths: Sequence[str | Path], data_root: str | Path | None = None) -> list[ExplainRun]:
    """The runs at ``paths``, checked and in display order (see the module docstring)."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise ExplainError("No runs given: runs='[<run dir>,...]' (each a finished training run).")
    seen: dict[Path, Path] = {}
    for path in paths:
        if path.resolve() in seen:
            raise ExplainError(f"Run {path} is listed twice (also as {seen[path.resolve()]}).")
        seen[path.resolve()] = path
    loaded = []
    for path in paths:
        inputs = run_inputs(path, data_root)
        record = RunDir(path).record()
        checkpoint = _checkpoint(path)
        loaded.append((record.get("model") or path.name, record.get("family"), inputs, checkpoint))
    _check_same_data(loaded)
    names = unique_names([m for m, *_ in loaded], [inputs.run for _, _, inputs, _ in loaded])
    runs = [ExplainRun(name, m, family, inputs, ckpt) for name, (m, family, inputs, ckpt) in zip(names, loaded, strict=True)]
    return sorted(runs, key=lambda r: (*order_key(r.model_name, r.family), r.name))


def _checkpoint(path: Path) -> Path:
    try:
        checkpoint = RunDir(path).best_checkpoint()
    except FileNotFoundError as error:
        raise ExplainError(f"Run {path} cannot be explained: {error}") from error
    if not checkpoint.is_file():
        raise ExplainError(
            f"Run {path} cannot be explained: its best checkpoint {checkpoint} (run.json 'checkpoint') does not "
            "exist; Grad-CAM needs the trained weights."
        )
    return checkpoint


def _check_same_data(loaded) -> None:
    first_model, _, first, _ = loaded[0]
    for model, _, inputs, _ in loaded[1:]:
        for what, a, b in (
            ("split fingerprint", first.split_fingerprint, inputs.split_fingerprint),
            ("dataset root", str(first.root.resolve()), str(inputs.root.resolve())),
            ("task", first.task, inputs.task),
        ):
            if a != b:
                raise ExplainError(
                    f"Runs {first.run} ({first_model}) and {inputs.run} ({model}) have a different {what} "
                    f"({a} vs {b}); runs explained together must be trained on the same split of the same data."
                )
