"""The paper's leak, measured: one model trained under the paper's image split and under a patient split
of the same images, over several seeds; what `make leak-check` runs.

    python scripts/leak_check.py --data <BreaKHis_v1> [--seeds 3] [--epochs 3] [--out DIR] [overrides...]
    python scripts/leak_check.py --out DIR --tables-only     # the tables again, from the runs in DIR

Each seed s trains the model twice with training seed s and split seed s: once on ``split=image`` (the
paper's: stratified by class x magnification, so a person's images land in train and test) and once on
``split=patient`` (whole people to train, val or test; ``data.patient_key=number``). Everything else is the
same: data, model (``lite0``, ImageNet weights offline; the last two stages and the head are trained,
``model.frozen_layers=33``, so it runs on a CPU in minutes), augmentation, epochs. The runs are one Hydra
multirun (printed first, so it can be rerun by hand).

Output in ``--out``: ``leak_check.md`` and ``leak_check.html`` (the tables), ``leak_check.json`` (every
number), ``runs/`` (the runs). The tables give, per split strategy, the test accuracy, balanced accuracy
and patient recognition rate as the mean over seeds with a 95 % t-interval over seeds (the spread of the
whole recipe: split, initialisation, training), the image-minus-patient difference paired by seed, each
run's own numbers with its patient-bootstrap interval (recomputed from its prediction file; none where its
test set has too few patients), and the leak: test people (and slides) that also have images in train.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import t

from histo.evaluation import metrics
from histo.evaluation.json_file import write_json
from histo.evaluation.run_comparison import find_runs
from histo.evaluation.table_format import COLUMNS

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "breakhis-sample" / "BreaKHis_v1"
SHOWN = ("accuracy", "balanced_accuracy", "patient_recognition_rate")
STRATEGIES = {"image": "image split (the paper's)", "patient": "patient split"}
CPU = ["trainer=cpu", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
       "data.batch_size=16", "model.frozen_layers=33"]


def train(data: Path, sweep: Path, seeds: int, epochs: int, model: str, extra: list[str]) -> None:
    """One multirun: both split strategies x ``seeds`` seeds (split seed = training seed)."""
    cmd = [sys.executable, "-m", "histo.train", "-m", "split=image,patient", f"seed={','.join(map(str, range(seeds)))}",
           "split.seed=${seed}", f"model={model}", f"trainer.max_epochs={epochs}", f"data.root={data}",
           f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=${split.strategy}_seed${seed}", "name=leak_check",
           *CPU, *extra]
    print("$ " + " ".join(f"'{c}'" if "$" in c else c for c in cmd), flush=True)
    if subprocess.run(cmd).returncode != 0:
        sys.exit("leak_check: training failed (command above); fix it and rerun.")


def collect(sweep: Path) -> list[dict]:
    """Per run: strategy, seed, test metrics with their intervals (from its prediction file, with the
    current bootstrap), test size, leak counts."""
    runs = []
    for run in find_runs(sweep):
        record = run.record()
        test = metrics.evaluate(run.read_predictions("test"))
        runs.append({
            "run": str(run.path), "strategy": record["split"]["strategy"], "seed": record["seed"],
            "model": record["model"], "epochs": record["config"]["trainer"]["max_epochs"],
            "data": record["data"]["root"],
            "n_images": test["overall"]["n_images"], "n_patients": test["overall"]["n_patients"],
            **{m: test["overall"][m] for m in SHOWN},
            "ci": {m: (test.get("ci") or {}).get("overall", {}).get(m) for m in SHOWN},
            "ci_withheld": (test.get("ci_method") or {}).get("withheld", {}).get("overall"),
            "leak": record["split"].get("test_patients_in_train_by_key") or {},
        })
    return sorted(runs, key=lambda r: (r["strategy"], r["seed"]))


def mean_interval(values, bounds=(0.0, 1.0), level: float = 0.95) -> dict:
    """Mean and t-interval of ``values`` (one per seed), clipped to the metric's ``bounds``.

    >>> [round(x, 3) for x in mean_interval([0.8, 0.9, 1.0])["interval"]]
    [0.652, 1.0]
    """
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    if len(values) < 2:
        return {"mean": mean, "interval": None, "n": len(values)}
    half = t.ppf((1 + level) / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return {"mean": mean, "interval": [max(mean - half, bounds[0]), min(mean + half, bounds[1])], "n": len(values)}


def summarize(runs: list[dict]) -> dict:
    """Per strategy and metric the mean over seeds, and the image - patient difference paired by seed."""
    by = {s: {r["seed"]: r for r in runs if r["strategy"] == s} for s in STRATEGIES}
    seeds = sorted(set(by["image"]) & set(by["patient"]))
    if not seeds:
        sys.exit("leak_check: no seed has finished runs of both split strategies.")
    out = {"seeds": seeds, "metrics": {}}
    for m in SHOWN:
        image = [by["image"][s][m] for s in seeds]
        patient = [by["patient"][s][m] for s in seeds]
        out["metrics"][m] = {"image": mean_interval(image), "patient": mean_interval(patient),
                             "difference": mean_interval(np.subtract(image, patient), bounds=(-1.0, 1.0))}
    out["leak"] = {s: {key: [by[s][seed]["leak"].get(key) for seed in seeds] for key in ("number", "slide")}
                   for s in STRATEGIES}
    out["test_patients"] = {s: [by[s][seed]["n_patients"] for seed in seeds] for s in STRATEGIES}
    return out


def markdown(summary: dict, runs: list[dict]) -> str:
    seeds = summary["seeds"]
    recipe = sorted({f"{r['model']}, {r['epochs']} epochs" for r in runs})
    lines = [
        f"# The paper's leak on {', '.join(sorted({r['data'] for r in runs}))}: {'; '.join(recipe)}, seeds "
        f"{', '.join(map(str, seeds))}",
        "",
        "Mean over seeds [95 % t-interval over seeds]; difference: image split minus patient split, paired by seed.",
        "",
        "| test metric | " + " | ".join(STRATEGIES.values()) + " | difference |",
        "|---|---|---|---|",
    ]
    for m, cells in summary["metrics"].items():
        lines.append(f"| {COLUMNS[m]} | " + " | ".join(_mean(cells[k]) for k in ("image", "patient", "difference")) + " |")
    leak = summary["leak"]
    lines.append("| test people also in train (per seed) | " + " | ".join(
        ", ".join(map(str, leak[s]["number"])) for s in STRATEGIES) + " | |")
    lines.append("| test slides also in train (per seed) | " + " | ".join(
        ", ".join(map(str, leak[s]["slide"])) for s in STRATEGIES) + " | |")
    lines.append("| test people (per seed) | " + " | ".join(
        ", ".join(map(str, summary["test_patients"][s])) for s in STRATEGIES) + " | |")
    lines += ["", "## Each run (test split, patient-bootstrap 95 % CI of the run's own test set)", "",
              "| split | seed | test images (people) | " + " | ".join(COLUMNS[m] for m in SHOWN)
              + " | test people (slides) also in train |", "|---|---|---|" + "---|" * len(SHOWN) + "---|"]
    for r in runs:
        cells = [f"{r[m]:.3f}" + (f" ({r['ci'][m][0]:.3f}-{r['ci'][m][1]:.3f})" if r["ci"][m] and r["ci"][m][0] is not None
                                  else " (no CI)") for m in SHOWN]
        lines.append(f"| {r['strategy']} | {r['seed']} | {r['n_images']} ({r['n_patients']}) | " + " | ".join(cells)
                     + f" | {r['leak'].get('number')} ({r['leak'].get('slide')}) |")
    withheld = sorted({r["ci_withheld"] for r in runs if r["ci_withheld"]})
    if withheld:
        lines += ["", "No CI: " + "; ".join(withheld) + " (scripts/ci_coverage.py measures why)."]
    return "\n".join(lines) + "\n"


def _mean(cell: dict) -> str:
    interval = cell["interval"]
    return f"{cell['mean']:.3f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")


def html(text: str, title: str) -> str:
    """The markdown as one self-contained HTML page."""
    import markdown as md

    body = md.markdown(text, extensions=["tables"])
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:24px auto;color:#222}"
             "table{border-collapse:collapse;font-size:14px;margin:10px 0}th,td{border:1px solid #ccc;padding:4px 8px}"
             "th{background:#f3f3f3}")
    return f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>{style}</style></head><body>\n{body}\n</body></html>\n'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=SAMPLE, help="the BreaKHis_v1 folder (default: the shared sample)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--model", default="lite0")
    parser.add_argument("--out", type=Path, default=None, help="default: outputs/leak_check-<time>")
    parser.add_argument("--tables-only", action="store_true", help="no training: tables of the runs in --out")
    args, extra = parser.parse_known_args()
    if not args.data.is_dir():
        parser.error(f"--data must be a BreaKHis_v1 folder (got {args.data}); e.g. make leak-check DATA=/data/BreaKHis_v1")
    if args.tables_only and args.out is None:
        parser.error("--tables-only needs --out, the folder of an earlier leak check")
    out = args.out or Path("outputs") / f"leak_check-{time.strftime('%Y%m%d-%H%M%S')}"
    started = time.time()
    if not args.tables_only:
        train(args.data, out / "runs", args.seeds, args.epochs, args.model, extra)
    runs = collect(out / "runs")
    summary = summarize(runs)
    text = markdown(summary, runs)
    if not args.tables_only:
        text += f"\n{time.time() - started:.0f} s on this machine.\n"
    (out / "leak_check.md").write_text(text)
    (out / "leak_check.html").write_text(html(text, "histo leak check"))
    write_json(out / "leak_check.json", {"summary": summary, "runs": runs})
    print("\n" + text)
    print(f"Written: {out / 'leak_check.md'}, {out / 'leak_check.html'}, {out / 'leak_check.json'}")


if __name__ == "__main__":
    main()
