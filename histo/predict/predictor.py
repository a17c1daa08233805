"""Apply trained runs, or a fitted ensemble, to images they have never seen.

    from histo.predict import Predictor
    predictor = Predictor.from_runs(["outputs/x/runs/a", "outputs/x/runs/b"])           # soft mean of two runs
    predictor = Predictor.from_ensemble("outputs/ensembles/v1/2025-01-01_10-00-00", method="stack")
    table = predictor.predict(["new.png", "folder/", pil_image, uint8_array], tta="d4")

Each member sees exactly its run's evaluation input (:class:`~histo.evaluation.model_input.ModelInput`:
its stain target, size and interpolation; the model's own normalization) and runs in its run's
precision unless told otherwise, so on the run's own test images the logits equal its
``predictions/test.csv``. A fitted ensemble combines the members exactly as histo-ensemble fitted it
(:mod:`histo.ensemble.fitted`). With test-time augmentation every view goes through members and
ensemble, and the probabilities are averaged over views (:mod:`histo.predict.tta`).

The table (one row per usable image, in input order):

============================  ===================================================================
image                         the path (or name) as given
pred                          the predicted class name
prob_<class>                  the ensemble's (or the single run's) probability per class
agreement                     share of members whose own prediction is ``pred``
label, patient, subtype,      from a BreaKHis file name (any image extension) or a CSV's columns;
magnification                 empty when unknown. ``label`` is a class name, like ``pred``.
<member>.prob_<class>         each member's probability
<member>.logit_<class>        each member's logits (with TTA: log of its mean probability)
============================  ===================================================================
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from histo.data.breakhis import parse_any_name
from histo.data.image_file import MAX_PIXELS
from histo.ensemble import fitted as fitted_ensemble
from histo.ensemble.members import EnsembleError
from histo.ensemble.methods import METHODS
from histo.evaluation import metrics, predictions
from histo.predict import tta as tta_views
from histo.predict.errors import PredictError
from histo.predict.models import RunModel, load_runs
from histo.predict.prepared import PreparedImages, collate
from histo.predict.sources import Source, collect
from histo.stain.normalizer import REASONS

log = logging.getLogger("histo.predict")

# methods that runs can be combined with without a histo-ensemble directory (soft, hard)
UNFITTED = tuple(name for name, method in METHODS.items() if not method.fitted)
META = ["label", "patient", "subtype", "magnification"]


@dataclass
class PredictionResult:
    """What one :meth:`Predictor.run` produced: the table, the inputs it skipped and why, and the time it took."""

    table: pd.DataFrame
    skipped: pd.DataFrame  # image, reason
    seconds: float
    class_names: list[str]
    member_names: list[str]
    stain_unchanged: dict = field(default_factory=dict)  # member -> {reason: count}

    @property
    def images_per_second(self) -> float:
        return len(self.table) / self.seconds if self.seconds > 0 else float("nan")

    def labelled(self, member: str | None = None) -> pd.DataFrame:
        """The labelled rows in the prediction-file contract (``logit_<class>``: the ensemble's log-probabilities,
        or ``member``'s logits), for :func:`histo.evaluation.metrics.evaluate`."""
        known = self.table["label"].isin(self.class_names)
        rows = self.table.loc[known]
        frame = pd.DataFrame({
            "image": rows["image"].to_numpy(),
            "patient": rows["patient"].where(rows["patient"] != "", rows["image"]).to_numpy(),
            "subtype": rows["subtype"].to_numpy(),
            "magnification": rows["magnification"].replace("", "unknown").astype(str).to_numpy(),
            "label": rows["label"].map(self.class_names.index).to_numpy(dtype=int),
        })
        prefix = f"{member}." if member else ""
        for name in self.class_names:
            values = rows[f"{prefix}logit_{name}"] if member else np.log(np.clip(rows[f"prob_{name}"], 1e-300, None))
            frame[f"logit_{name}"] = values.to_numpy(dtype=np.float64)
        return frame

    def metrics(self, resamples: int = metrics.RESAMPLES, seed: int = metrics.SEED, level: float = metrics.LEVEL) -> dict | None:
        """Metrics with patient-bootstrap CIs of the ensemble and each member on the labelled rows (None if none)."""
        if not self.table["label"].isin(self.class_names).any():
            return None

        def score(member=None):
            return metrics.evaluate(self.labelled(member), resamples=resamples, seed=seed, level=level)

        return {"n_images": len(self.table), "n_labelled": int(self.table["label"].isin(self.class_names).sum()),
                "ensemble": score(), "members": {name: score(name) for name in self.member_names}}


class Predictor:
    """Members (:class:`~histo.predict.models.RunModel`) and how to combine them (a fitted ensemble, or the
    unfitted soft mean or hard vote). Build with :meth:`from_runs` or :meth:`from_ensemble`."""

    def __init__(self, members: list[RunModel], combiner: fitted_ensemble.FittedEnsemble, calibrated: bool = False):
        self.members, self.combiner, self.calibrated = members, combiner, calibrated
        if calibrated and combiner.temperature is None:
            raise PredictError(f"calibrated=true: {combiner.no_temperature()}")

    @classmethod
    def from_runs(cls, runs, method: str = "soft", device: str = "auto", precision: str = "auto") -> Predictor:
        """The finished training runs at ``runs``, combined by ``method`` (soft or hard; one run: itself)."""
        if method not in METHODS:
            raise PredictError(f"method={method!r} is not an ensemble method; use one of {', '.join(METHODS)}.")
        if method not in UNFITTED:
            raise PredictError(f"method={method} is fitted on val: fit it with histo-ensemble and pass ensemble=<its "
                               f"output dir>; runs alone combine with {' or '.join(UNFITTED)}.")
        members = load_runs([runs] if isinstance(runs, (str, Path)) else list(runs), resolve_device(device), precision)
        combiner = fitted_ensemble.FittedEnsemble(Path("runs"), method, members[0].class_names,
                                                  [{"name": m.name} for m in members], {})
        return cls(members, combiner)

    @classmethod
    def from_ensemble(cls, ensemble_dir, method: str = "soft", device: str = "auto", precision: str = "auto",
                      calibrated: bool = False) -> Predictor:
        """The fitted ``method`` of a histo-ensemble output directory, with its members' runs."""
        try:
            combiner = fitted_ensemble.load(ensemble_dir, method)
            runs = combiner.member_runs()
        except EnsembleError as error:
            raise PredictError(str(error)) from error
        members = load_runs(runs, resolve_device(device), precision, names=combiner.member_names)
        if members[0].class_names != combiner.class_names:
            raise PredictError(f"{combiner.path} was fitted for classes {combiner.class_names}, its members predict "
                               f"{members[0].class_names}.")
        return cls(members, combiner, calibrated)

    @property
    def class_names(self) -> list[str]:
        return self.combiner.class_names

    @property
    def member_names(self) -> list[str]:
        return [m.name for m in self.members]

    @property
    def method(self) -> str:
        return self.combiner.method

    @property
    def device(self) -> torch.device:
        return self.members[0].device

    def predict(self, images, **options) -> pd.DataFrame:
        """:meth:`run`'s table; the skipped inputs are in ``table.attrs["skipped"]``."""
        result = self.run(images, **options)
        result.table.attrs["skipped"] = result.skipped
        return result.table

    def run(self, images, tta: str = "none", batch_size: int = 32, num_workers: int = 0, progress: bool = False,
            max_pixels: int = MAX_PIXELS, on_batch=None) -> PredictionResult:
        """Predict ``images`` (paths, folders, globs, CSVs, PIL images or uint8 arrays; see
        :mod:`histo.predict.sources`). ``on_batch(members, rows, inputs)`` is called per batch with the
        prepared uint8 inputs (e.g. to draw Grad-CAM)."""
        if tta not in tta_views.TTA:
            raise PredictError(f"tta={tta!r} is not valid; use one of {', '.join(tta_views.TTA)}.")
        if batch_size < 1 or num_workers < 0:
            raise PredictError(f"batch_size must be >= 1 and num_workers >= 0 (got {batch_size}, {num_workers}).")
        started = time.perf_counter()
        sources, skipped = collect(images)
        inputs = {m.input.key: m.input for m in self.members}
        loader = DataLoader(PreparedImages(sources, inputs, max_pixels), batch_size=batch_size, shuffle=False,
                            num_workers=num_workers, collate_fn=collate, pin_memory=self.device.type == "cuda")
        rows, ensemble, member_probs, member_logits = [], [], [], []
        stain = {m.name: Counter() for m in self.members if m.input.stain is not None}
        with tqdm(total=len(sources), unit="img", disable=not progress, desc="histo-predict") as bar:
            for batch in loader:
                skipped += [(sources[i].name, reason) for i, reason in batch["errors"]]
                if batch["rows"]:
                    probs, member_p, member_z = self._batch(batch["inputs"], tta)
                    rows += batch["rows"]
                    ensemble.append(probs)
                    member_probs.append(member_p)
                    member_logits.append(member_z)
                    for m in self.members:
                        if m.name in stain:
                            stain[m.name].update(r for r in batch["stain"][m.input.key] if r)
                    if on_batch is not None:
                        on_batch(self.members, [sources[i] for i in batch["rows"]], batch["inputs"])
                bar.update(len(batch["rows"]) + len(batch["errors"]))
        table = self._table([sources[i] for i in rows], ensemble, member_probs, member_logits)
        skipped_frame = pd.DataFrame(skipped, columns=["image", "reason"])
        for name, counts in stain.items():
            if counts:
                log.warning("Stain normalization of %s left %d image(s) unchanged: %s.", name, sum(counts.values()),
                            ", ".join(f"{n} {REASONS.get(r, r)}" for r, n in counts.items()))
        return PredictionResult(table, skipped_frame, time.perf_counter() - started, self.class_names,
                                self.member_names, {k: dict(v) for k, v in stain.items()})

    def prepare(self, image) -> dict[str, np.ndarray]:
        """What each member sees of one image (a path, PIL image or array): name -> uint8 (S, S, 3)."""
        sources, skipped = collect([image])
        if skipped:
            raise PredictError(f"{skipped[0][0]}: {skipped[0][1]}")
        dataset = PreparedImages(sources[:1], {m.input.key: m.input for m in self.members})
        item = dataset[0]
        if "error" in item:
            raise PredictError(f"{sources[0].name}: {item['error']}")
        return {m.name: item["inputs"][m.input.key].permute(1, 2, 0).numpy() for m in self.members}

    def _batch(self, inputs: dict, tta: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Ensemble probabilities (N, C), member probabilities and logits (M, N, C) of one prepared batch."""
        logits, features = [], []  # per member: (V, N, C), (V, N, D)
        for member in self.members:
            images = inputs[member.input.key].to(member.device, non_blocking=True)
            outputs = [member.forward(view) for view in tta_views.views(images, tta)]
            logits.append(torch.stack([z for z, _ in outputs]).cpu().double().numpy())
            features.append(torch.stack([f for _, f in outputs]).cpu().numpy() if self.combiner.needs_features else None)
        logits = np.stack(logits)  # (M, V, N, C)
        views = logits.shape[1]
        combined = [self.combiner.combine(logits[:, v], [f[v] for f in features] if self.combiner.needs_features
                                          else None, calibrated=self.calibrated) for v in range(views)]
        member_probs = predictions.softmax(logits).mean(axis=1)
        member_logits = logits[:, 0] if views == 1 else np.log(np.clip(member_probs, 1e-300, None))
        return np.mean(combined, axis=0), member_probs, member_logits

    def _table(self, sources: list[Source], ensemble, member_probs, member_logits) -> pd.DataFrame:
        classes = self.class_names
        c = len(classes)
        probs = np.concatenate(ensemble) if ensemble else np.zeros((0, c))
        member_p = np.concatenate(member_probs, axis=1) if member_probs else np.zeros((len(self.members), 0, c))
        member_z = np.concatenate(member_logits, axis=1) if member_logits else np.zeros((len(self.members), 0, c))
        pred = probs.argmax(axis=1)
        columns = {"image": [s.name for s in sources], "pred": [classes[k] for k in pred]}
        columns.update({f"prob_{name}": probs[:, k] for k, name in enumerate(classes)})
        columns["agreement"] = (member_p.argmax(axis=2) == pred).mean(axis=0) if len(sources) else np.zeros(0)
        described = [self._describe(s) for s in sources]
        columns.update({key: [d[key] for d in described] for key in META})
        for m, member in enumerate(self.members):
            columns.update({f"{member.name}.prob_{name}": member_p[m, :, k] for k, name in enumerate(classes)})
            columns.update({f"{member.name}.logit_{name}": member_z[m, :, k] for k, name in enumerate(classes)})
        return pd.DataFrame(columns)

    def _describe(self, source: Source) -> dict:
        """Label (class name), patient, subtype and magnification from a BreaKHis file name or the CSV columns."""
        record = self.members[0].record
        task = record.get("task", "binary")
        key = ((record.get("config") or {}).get("data") or {}).get("patient_key", "slide")
        parsed = parse_any_name(Path(source.name).name) if source.path is not None else None
        out = dict.fromkeys(META, "")
        if parsed is not None:
            out.update(label=parsed.class_name(task), patient=parsed.patient(key), subtype=parsed.subtype,
                       magnification=str(parsed.magnification))
        if source.label is not None:
            out["label"] = _class_name(source.label, self.class_names, source.name)
        if source.patient is not None:
            out["patient"] = source.patient
        return out


def load_predictor(runs=(), ensemble=None, method: str = "soft", calibrated: bool = False, device: str = "auto",
                   precision: str = "auto") -> Predictor:
    """The Predictor the commands' options describe: ``runs`` combined by ``method``, or the fitted ``method`` of
    ``ensemble`` (one of the two)."""
    runs = [runs] if isinstance(runs, (str, Path)) else list(runs or [])
    if bool(runs) == bool(ensemble):
        raise PredictError("Give either runs='[<run dir>,...]' or ensemble=<histo-ensemble output dir> (not both).")
    if ensemble:
        return Predictor.from_ensemble(ensemble, method, device, precision, calibrated)
    if calibrated:
        raise PredictError("calibrated=true applies an ensemble's fitted temperature; runs alone have none.")
    return Predictor.from_runs(runs, method, device, precision)


def _class_name(label: str, class_names: list[str], image: str) -> str:
    """A CSV label as a class name: the name itself, or its index."""
    if label in class_names:
        return label
    if label.isdigit() and int(label) < len(class_names):
        return class_names[int(label)]
    raise PredictError(f"The CSV label {label!r} of {image} is not a class ({', '.join(class_names)}) or class index.")


def resolve_device(device: str) -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:<n>``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise PredictError(f"device={device} but CUDA is not available here; use device=cpu or device=auto.")
    try:
        return torch.device(device)
    except RuntimeError as error:
        raise PredictError(f"device={device!r} is not valid; use auto, cpu or cuda.") from error
