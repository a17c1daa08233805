"""A fitted ensemble on disk: what histo-ensemble fitted, in plain files, so that new images get exactly
the combination it scored (histo-predict, the app).

    <ensemble out>/fitted/<method>.json          method, classes, members, parameters, temperature
    <ensemble out>/fitted/<method>.safetensors   the method's tensors, when it has any (feature_stack's network)

Plain JSON and safetensors, never pickle: a fitted file is data, safe to open whoever wrote it.
Parameters per method: soft and hard none; weighted ``weights`` (one per member, summing to 1);
greedy ``weights`` and ``picks``; stack ``coef``, ``intercept``, ``classes`` and ``C`` of the logistic
regression on the members' log-odds (binary) or centred logits; feature_stack the MLP's shape in the
JSON and its weights and feature standardisation (``mean``, ``std``) in the safetensors file.
``temperature`` is the one fitted on val with ``calibrate=true`` (else null).

Members are named by run directory (absolute, and relative to the ensemble directory so that a moved
tree still resolves) with the sha256 of the val prediction file the fit saw: a member retrained
since is refused, never silently combined with stale parameters.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from histo.ensemble.members import EnsembleError, Members
from histo.ensemble.methods import METHODS
from histo.evaluation import calibration
from histo.evaluation.json_file import write_json
from histo.evaluation.run_dir import RunDir

FORMAT = "histo-fitted-ensemble"
VERSION = 1
DIRECTORY = "fitted"
CHECK_TOLERANCE = 1e-9  # saved parameters must give back the stage's own test probabilities to this


@dataclass(frozen=True)
class FittedEnsemble:
    """One fitted method of an ensemble directory, ready to combine new member outputs."""

    path: Path  # the JSON file
    method: str
    class_names: list[str]
    members: list[dict]  # name, model, run, run_relative, val_sha256
    params: dict
    temperature: float | None = None
    tensors: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def member_names(self) -> list[str]:
        return [m["name"] for m in self.members]

    @property
    def needs_features(self) -> bool:
        """Whether :meth:`combine` needs the members' penultimate features (feature_stack)."""
        return METHODS[self.method].needs_features

    def combine(self, logits: np.ndarray, features: Sequence[np.ndarray] | None = None,
                calibrated: bool = False) -> np.ndarray:
        """(images, classes) probabilities from the members' (members, images, classes) ``logits`` (and,
        for feature_stack, each member's (images, D) ``features``); ``calibrated`` applies the temperature."""
        logits = np.asarray(logits, dtype=np.float64)
        if logits.ndim != 3 or logits.shape[0] != len(self.members) or logits.shape[2] != len(self.class_names):
            raise EnsembleError(f"{self.path}: expected logits of {len(self.members)} members x images x "
                                f"{len(self.class_names)} classes, got shape {logits.shape}.")
        if self.needs_features and (features is None or len(features) != len(self.members)):
            raise EnsembleError(f"{self.path}: method {self.method} needs each member's penultimate features.")
        probs = METHODS[self.method].apply(self, logits, features)
        if not calibrated:
            return probs
        if self.temperature is None:
            raise EnsembleError(self.no_temperature())
        return calibration.scale(np.log(np.clip(probs, 1e-300, None)), self.temperature)

    def no_temperature(self) -> str:
        """Why ``calibrated`` cannot be applied: no temperature in the file."""
        if METHODS[self.method].score == "vote_share":
            return (f"{self.path}: {self.method} outputs vote shares, not probabilities, so no temperature is "
                    "fitted for it; use calibrated=false or a soft method.")
        return f"{self.path} has no temperature: run histo-ensemble with calibrate=true to fit one."

    def member_runs(self) -> list[Path]:
        """The members' run directories, each checked to hold the val predictions the ensemble was fitted on."""
        runs = []
        for member in self.members:
            candidates = [Path(member["run"]), self.path.parent.parent / member["run_relative"]]
            run = next((c for c in candidates if (c / "run.json").is_file()), None)
            if run is None:
                raise EnsembleError(
                    f"Member {member['name']} of {self.path} is not found (looked at "
                    f"{' and '.join(str(c) for c in candidates)}); the ensemble needs its members' run directories."
                )
            found = sha256(RunDir(run).predictions_path("val"))
            if found != member["val_sha256"]:
                raise EnsembleError(
                    f"Member {member['name']} ({run}) has changed since {self.path} was fitted: its "
                    f"predictions/val.csv has sha256 {found[:12]}..., the fit saw {member['val_sha256'][:12]}.... "
                    "Refit the ensemble with histo-ensemble."
                )
            runs.append(run)
        return runs


def save(out: str | Path, combination, members: Members, temperature: float | None = None) -> Path:
    """Write ``combination``'s parameters (a :class:`histo.ensemble.methods.Combination`) under ``out/fitted/``."""
    directory = Path(out) / DIRECTORY
    path = directory / f"{combination.method}.json"
    document = {
        "format": FORMAT,
        "version": VERSION,
        "method": combination.method,
        "class_names": list(members.class_names),
        "members": [_member(m, directory.parent) for m in members],
        "params": combination.params,
        "temperature": temperature,
        "tensors": f"{combination.method}.safetensors" if combination.tensors else None,
    }
    if combination.tensors:
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in combination.tensors.items()},
                  str(directory / document["tensors"]))
    return write_json(path, document)


def load(ensemble_dir: str | Path, method: str) -> FittedEnsemble:
    """The fitted ``method`` of a histo-ensemble output directory; errors name what is missing and what to do."""
    ensemble_dir = Path(ensemble_dir)
    if not ensemble_dir.is_dir():
        raise EnsembleError(f"ensemble={ensemble_dir} is not a directory (give a histo-ensemble output directory).")
    path = ensemble_dir / DIRECTORY / f"{method}.json"
    if not path.is_file():
        have = available(ensemble_dir)
        raise EnsembleError(
            f"{ensemble_dir} has no fitted {method} ensemble ({path} is missing); "
            + (f"it has: {', '.join(have)}." if have else
               "it has no fitted parameters at all: rerun histo-ensemble (version with fitted/) on its runs.")
        )
    try:
        document = json.loads(path.read_text())
    except ValueError as error:
        raise EnsembleError(f"{path} is not valid JSON ({error}).") from error
    if method not in METHODS:
        raise EnsembleError(f"{path}: method {method!r} is not one this histo knows ({', '.join(METHODS)}).")
    if document.get("format") != FORMAT or document.get("version") != VERSION or document.get("method") != method:
        raise EnsembleError(f"{path} is not a version-{VERSION} fitted {method} ensemble file.")
    tensors = load_file(str(path.parent / document["tensors"])) if document.get("tensors") else {}
    return FittedEnsemble(path, method, document["class_names"], document["members"], document["params"],
                          document.get("temperature"), tensors)


def available(ensemble_dir: str | Path) -> list[str]:
    """The methods fitted in an ensemble directory."""
    return sorted(p.stem for p in (Path(ensemble_dir) / DIRECTORY).glob("*.json"))


def check(path: Path, combination, members: Members) -> None:
    """Apply the saved file to the members' test outputs: it must give back the stage's test probabilities."""
    fitted = load(path.parent.parent, combination.method)
    features = [m.features("test") for m in members] if fitted.needs_features else None
    gap = float(np.abs(fitted.combine(members.logits("test"), features) - combination.test).max(initial=0.0))
    if gap > CHECK_TOLERANCE:
        raise EnsembleError(f"Internal error: {path} does not reproduce the {combination.method} test probabilities "
                            f"(largest difference {gap:.2e}); please report it.")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _member(member, ensemble_dir: Path) -> dict:
    run = member.run.path.resolve()
    return {
        "name": member.name,
        "model": member.model,
        "run": str(run),
        "run_relative": os.path.relpath(run, ensemble_dir.resolve()),
        "val_sha256": sha256(member.run.predictions_path("val")),
    }
