"""Reproduce Kalati et al. 2025 end to end; what `make paper`, `make paper-patient`, `make paper-stain`
and `make paper-smoke` run.

    python scripts/paper.py paper   --data <BreaKHis_v1> [--out DIR] [--gpus N] [--precision P] [overrides...]
    python scripts/paper.py patient --data <BreaKHis_v1> [--folds 5] ...
    python scripts/paper.py stain   --data <BreaKHis_v1> ...
    python scripts/paper.py paper   --smoke          # the whole pipeline on synthetic data, tiny, CPU

paper:   the ten models (one Hydra multirun of experiment=paper/<model>), the V1, V2 and V1+V2
         ensembles with every method, Grad-CAM of the ten models on the misclassified test images, and a
         report whose table puts the paper's numbers beside ours (its gallery shows the Grad-CAM montages).
patient: the same on each of 5 patient-disjoint folds, then mean and spread across folds (folds.md).
stain:   experiment=paper/stain_comparison (V1-B0 without and with Vahadane) and a report of both,
         with McNemar's test between them.
paper and patient first build the image caches of the five input sizes (histo-prepare models=all), so
every image is decoded once, not once per model and epoch.
Each step is one of the project's commands, run as a subprocess and printed first, so any step can
be rerun by hand.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from histo.evaluation.mcnemar import mcnemar_frames
from histo.evaluation.paper import MODELS
from histo.evaluation.run_comparison import find_runs, fold_summary, fold_summary_markdown

ENSEMBLES = ["v1", "v2", "all"]
# --smoke: tiny and fast, on CPU (what CI runs so the reproduction path never rots).
SMOKE = ["trainer=cpu", "model.pretrained=false", "model.image_size=32", "trainer.max_epochs=1",
         "data.num_workers=0", "data.batch_size=16", "trainer.enable_progress_bar=false",
         "trainer.enable_model_summary=false", "trainer.num_sanity_val_steps=0"]
SMOKE_DATA = ["patients_per_subtype=2", "images_per_magnification=2", "width=64", "height=42"]


def histo(command: str, *args: str) -> None:
    """Run ``python -m histo.<command> args...``; stop the pipeline if it fails."""
    cmd = [sys.executable, "-m", f"histo.{command}", *args]
    print("\n$ " + " ".join(cmd), flush=True)
    if subprocess.run(cmd).returncode != 0:
        sys.exit(f"paper: step `histo.{command}` failed (command above); fix it and rerun.")


def trainer_args(gpus: int, precision: str | None, smoke: bool) -> list[str]:
    if smoke:
        return SMOKE
    args = [f"trainer.devices={gpus}"] + ([f"trainer.precision={precision}"] if precision else [])
    return args + (["trainer=ddp"] if gpus > 1 else [])


def prepare_caches(args, extra: list[str]) -> None:
    """Decode every image once for the ten models' five sizes (histo-prepare); training then reads the
    caches (data.cache=auto) instead of decoding PNGs every epoch. The ``data.*`` and ``paths.*`` overrides
    of ``extra`` go with it, so the caches are where training looks."""
    if args.smoke:
        return  # one tiny size: the training run builds its own cache
    shared = [a for a in extra if a.lstrip("+~").startswith(("data.", "paths."))]
    histo("prepare", f"data.root={args.data}", "models=all", *shared)


def train_models(data: Path, out: Path, experiments: list[str], extra: list[str]) -> Path:
    """One multirun over ``experiments``; returns its sweep directory."""
    sweep = out / "models"
    histo("train", "-m", f"experiment={','.join(experiments)}", f"data.root={data}", f"hydra.sweep.dir={sweep}",
          "predict.features=true", *extra)
    return sweep


def ensembles_and_report(sweep: Path, out: Path, extra: list[str], explain_extra: list[str]) -> Path:
    """The V1, V2 and V1+V2 ensembles, Grad-CAM of the ten models on the misclassified test images (the
    paper's multigradcam, in ``ensembles/all/explain``, where the report finds it), and the report."""
    dirs = []
    for name in ENSEMBLES:
        dirs.append(out / "ensembles" / name)
        histo("ensemble", f"members={name}", f"sweep_dir={sweep}", f"out={dirs[-1]}", "methods=all",
              "compare_to=paper", *extra)
    runs = ",".join(str(run.path) for run in find_runs(sweep))
    histo("explain", f"runs=[{runs}]", "images=misclassified", f"out={dirs[-1] / 'explain'}", *explain_extra)
    report = out / "report"
    histo("report", f"runs=[{','.join(map(str, dirs))}]", f"out={report}", "compare_to=paper", *extra)
    return report


def paper(args, extra: list[str], out: Path) -> list[str]:
    prepare_caches(args, extra)
    sweep = train_models(args.data, out, [f"paper/{m}" for m in MODELS], extra)
    report = ensembles_and_report(sweep, out, _report_extra(args), _explain_extra(args))
    return [f"Report (ours beside the paper's): {report / 'report.html'} and {report / 'report.md'}",
            f"Grad-CAM of the misclassified test images: {out / 'ensembles' / 'all' / 'explain' / 'index.html'}",
            *(f"Ensemble {e}: {out / 'ensembles' / e / 'table.md'}" for e in ENSEMBLES),
            f"Single models: {sweep}"]


def patient(args, extra: list[str], out: Path) -> list[str]:
    prepare_caches(args, extra)
    reports = []
    for fold in range(args.folds):
        fold_out = out / f"fold{fold}"
        sweep = train_models(args.data, fold_out, [f"patient/{m}" for m in MODELS],
                             [f"split.fold={fold}", f"split.folds={args.folds}", *extra])
        reports.append(ensembles_and_report(sweep, fold_out, _report_extra(args), _explain_extra(args)) / "metrics.json")
    summary = fold_summary(reports)
    summary.to_csv(out / "folds.csv", index=False)
    (out / "folds.md").write_text(f"# The paper's recipe on {args.folds} patient-disjoint folds (test split)\n\n"
                                  + fold_summary_markdown(summary))
    print("\n" + fold_summary_markdown(summary))
    return [f"Across folds (mean, sd, min-max): {out / 'folds.md'} and {out / 'folds.csv'}",
            *(f"Fold {k} report: {r.parent / 'report.html'}" for k, r in enumerate(reports))]


def stain(args, extra: list[str], out: Path) -> list[str]:
    sweep = out / "models"
    histo("train", "-m", "experiment=paper/stain_comparison", f"data.root={args.data}", f"hydra.sweep.dir={sweep}",
          *extra)
    found = find_runs(sweep)
    runs = [run.path for run in found]
    report = out / "report"
    histo("report", f"runs=[{','.join(map(str, runs))}]", f"out={report}", "compare_to=paper", *_report_extra(args))
    frames = [run.read_predictions("test") for run in found]
    test = mcnemar_frames(*frames)
    text = (f"McNemar's exact test, {runs[0].name} vs {runs[1].name} on the same {test['n_images']} test images: "
            f"{test['a_only_correct']} right only without stain normalization, {test['b_only_correct']} right only "
            f"with it, p = {test['p_value']:.3g}.\n")
    (out / "mcnemar.txt").write_text(text)
    print("\n" + text)
    return [f"Report: {report / 'report.html'}", f"McNemar: {out / 'mcnemar.txt'}", f"Runs: {sweep}"]


def _report_extra(args) -> list[str]:
    return ["bootstrap.resamples=200"] if args.smoke else []


def _explain_extra(args) -> list[str]:
    """As many images as the report's gallery shows (40); with --smoke a few, at a layer with a 4x4 map at 32 px."""
    return ["max_images=6", "layer=blocks.2", "device=cpu"] if args.smoke else ["max_images=40"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("protocol", choices=["paper", "patient", "stain"])
    parser.add_argument("--data", type=Path, help="the BreaKHis_v1 folder (not needed with --smoke)")
    parser.add_argument("--out", type=Path, default=None, help="default: outputs/<protocol>-<time>")
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument("--precision", default=None, help="trainer.precision, e.g. bf16-mixed or 16-mixed")
    parser.add_argument("--folds", type=int, default=5, help="patient protocol: number of folds")
    parser.add_argument("--smoke", action="store_true", help="synthetic data, tiny models, one epoch, CPU")
    args, extra = parser.parse_known_args()
    out = args.out or Path("outputs") / f"{args.protocol}{'-smoke' if args.smoke else ''}-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.smoke:
        args.data = out / "data"
        histo("synth", f"out={args.data}", *SMOKE_DATA)
        extra = [f"data.cache_dir={out / 'cache'}", *extra]  # CI leaves nothing outside --out
    elif args.data is None or not args.data.is_dir():
        parser.error(f"--data must be your BreaKHis_v1 folder (got {args.data}); e.g. make paper DATA=/data/BreaKHis_v1")
    extra = trainer_args(args.gpus, args.precision, args.smoke) + extra
    started = time.time()
    where = {"paper": paper, "patient": patient, "stain": stain}[args.protocol](args, extra, out)
    print(f"\nDone in {(time.time() - started) / 60:.1f} min. Results under {out}:")
    for line in where:
        print("  " + line)


if __name__ == "__main__":
    main()
