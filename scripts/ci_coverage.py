"""How often do histo's 95 % intervals cover the truth? Simulated test sets with known true metrics.

    python scripts/ci_coverage.py                      # the default grid, every candidate scheme (minutes)
    python scripts/ci_coverage.py --sims 100 --patients 3,13 --images 200   # quicker

Each simulated test set has P patients (a share ``--benign-share`` of them benign, at least one, as a
patient split stratified by class gives) and N images spread unevenly over the patients (Dirichlet
shares, at least one image each). Images of one patient are correlated: an image's margin (the
logit of its true class) is ``mu_class + u_patient + e_image`` with ``u ~ N(0, sd_patient)`` and
``e ~ N(0, sd_image)``; it is classified correctly when the margin is positive. The true values
follow in closed form: a class's recall (and expected share of a patient's images classified
correctly) is ``Phi(mu / sqrt(sd_patient^2 + sd_image^2))``; accuracy and the patient recognition
rate are their mean over the test set's class make-up (expected images per patient are the same in
both classes); AUROC is ``Phi((mu_b + mu_m) / sqrt(2 (sd_patient^2 + sd_image^2)))``.

For every candidate :class:`histo.evaluation.bootstrap.Scheme` (the same code histo runs), it reports the
share of intervals that contain the truth, per metric and size; a missing or zero-width interval
does not cover. ``histo`` (the default scheme) gives no interval where a class has fewer test patients
than its ``min_patients_per_class``: those cells read ``none`` instead of a coverage.
Output: markdown tables on stdout and ``<out>/coverage.md``, every number in ``<out>/coverage.csv``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import norm

from histo.evaluation import bootstrap, metrics

SHOWN = ("accuracy", "balanced_accuracy", "auroc", "patient_recognition_rate", "specificity")


def truths(n_benign: int, n_malignant: int, mu_benign: float, mu_malignant: float, sd_patient: float,
           sd_image: float) -> dict[str, float]:
    """The true value of every shown metric for a test set of this class make-up (see the module docstring)."""
    sd = np.hypot(sd_patient, sd_image)
    recall_b, recall_m = norm.cdf(mu_benign / sd), norm.cdf(mu_malignant / sd)
    mixed = (n_benign * recall_b + n_malignant * recall_m) / (n_benign + n_malignant)
    return {"accuracy": mixed, "balanced_accuracy": (recall_b + recall_m) / 2,
            "auroc": norm.cdf((mu_benign + mu_malignant) / (np.sqrt(2) * sd)),
            "patient_recognition_rate": mixed, "specificity": recall_b}


def simulate(rng: np.random.Generator, n_benign: int, n_malignant: int, n_images: int, args) -> metrics.PatientTable:
    """One test set: labels, malignant probabilities and patients of ``n_images`` images."""
    patient_label = np.r_[np.zeros(n_benign, int), np.ones(n_malignant, int)]
    n_patients = len(patient_label)
    counts = 1 + rng.multinomial(n_images - n_patients, rng.dirichlet(np.full(n_patients, args.dirichlet)))
    image_patient = np.repeat(np.arange(n_patients), counts)
    labels = patient_label[image_patient]
    mu = np.where(labels == 1, args.mu_malignant, args.mu_benign)
    margin = mu + rng.normal(0, args.sd_patient, n_patients)[image_patient] + rng.normal(0, args.sd_image, len(labels))
    logit_malignant = np.where(labels == 1, margin, -margin)
    p = 1 / (1 + np.exp(-logit_malignant))
    return metrics.patient_table(labels, np.c_[1 - p, p], image_patient)


class CachedStatistic:
    """``metrics.scores`` of one table, remembering results by weights (schemes that resample alike share them)."""

    def __init__(self, table: metrics.PatientTable):
        self.table, self.cache = table, {}

    def __call__(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        key = (weights.shape, np.asarray(weights).tobytes())
        if key not in self.cache:
            values = metrics.scores(self.table, weights)
            self.cache[key] = {name: values[name] for name in SHOWN}
        return self.cache[key]


def coverage_cell(n_benign: int, n_malignant: int, n_images: int, schemes: dict[str, bootstrap.Scheme], args,
                  seed: int) -> list[dict]:
    """Coverage and median width of every scheme for every shown metric, over ``args.sims`` test sets."""
    rng = np.random.default_rng(seed)
    truth = truths(n_benign, n_malignant, args.mu_benign, args.mu_malignant, args.sd_patient, args.sd_image)
    covered = {(s, m): [] for s in schemes for m in SHOWN}
    width = {(s, m): [] for s in schemes for m in SHOWN}
    for sim in range(args.sims):
        table = simulate(rng, n_benign, n_malignant, n_images, args)
        statistic = CachedStatistic(table)
        for name, scheme in schemes.items():
            found, _ = bootstrap.intervals(statistic, table.patient_label, args.resamples, seed * 100_003 + sim,
                                           args.level, scheme)
            for metric in SHOWN:
                low, high = found[metric] or (None, None)  # None: withheld, or every resample alike
                ok = low is not None and high is not None and high > low
                covered[name, metric].append(ok and low <= truth[metric] <= high)
                width[name, metric].append(high - low if ok else 0.0)
    rows = []
    for (name, metric), hits in covered.items():
        rows.append({"patients": n_benign + n_malignant, "benign": n_benign, "malignant": n_malignant,
                     "images": n_images, "scheme": name, "metric": metric, "truth": truth[metric],
                     "coverage": float(np.mean(hits)), "median_width": float(np.median(width[name, metric])),
                     "sims": args.sims})
    return rows


def split_sizes(patients: int, benign_share: float) -> tuple[int, int]:
    n_benign = min(max(1, round(benign_share * patients)), patients - 1)
    return n_benign, patients - n_benign


def old_vs_new(frame: pd.DataFrame, default: bootstrap.Scheme) -> str:
    """Coverage of histo's previous method and of the default, per metric and size."""
    header = ["test patients (B/M)", "images", *[f"{metrics.METRIC[m].title}: old / new" for m in SHOWN]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (patients, n_images), cell in frame.groupby(["patients", "images"], sort=True):
        first = cell.iloc[0]
        withheld = bootstrap.too_few_patients(np.r_[np.zeros(first["benign"]), np.ones(first["malignant"])],
                                              default.min_patients_per_class)
        cells = []
        for metric in SHOWN:
            old = cell[(cell["scheme"] == bootstrap.PREVIOUS.name) & (cell["metric"] == metric)]["coverage"].iloc[0]
            new = cell[(cell["scheme"] == default.without_minimum().name) & (cell["metric"] == metric)]["coverage"].iloc[0]
            cells.append(f"{old:.1%} / " + (f"none ({new:.0%})" if withheld else f"{new:.1%}"))
        lines.append("| " + " | ".join([f"{patients} ({first['benign']}/{first['malignant']})", str(n_images), *cells])
                     + " |")
    return "\n".join(lines) + "\n"


def candidates(frame: pd.DataFrame) -> str:
    """Every scheme's coverage per patient count: the mean over image counts, and the worst metric and size."""
    header = ["scheme", *[f"{p} patients" for p in sorted(frame["patients"].unique())]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for scheme, rows in frame.groupby("scheme", sort=False):
        cells = [f"{g['coverage'].mean():.1%} (min {g['coverage'].min():.1%})"
                 for _, g in rows.groupby("patients", sort=True)]
        lines.append("| " + " | ".join([scheme, *cells]) + " |")
    return "\n".join(lines) + "\n"


def simulate_all(args, started: float) -> pd.DataFrame:
    """Coverage of every candidate scheme (and histo's default) at every size of the grid."""
    schemes = dict(bootstrap.SCHEMES)
    schemes.setdefault(bootstrap.DEFAULT.without_minimum().name, bootstrap.DEFAULT.without_minimum())
    rows = []
    sizes = [(p, n) for p in map(int, args.patients.split(",")) for n in map(int, args.images.split(",")) if n >= p]
    for k, (patients, n_images) in enumerate(sizes):
        n_benign, n_malignant = split_sizes(patients, args.benign_share)
        rows += coverage_cell(n_benign, n_malignant, n_images, schemes, args, seed=args.seed * 1000 + k)
        print(f"  {patients} patients ({n_benign}/{n_malignant}), {n_images} images: done "
              f"({time.time() - started:.0f} s)", flush=True)
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", default="3,6,10,13,16,20", help="test patients per set (comma-separated)")
    parser.add_argument("--images", default="20,200,1200", help="test images per set (comma-separated)")
    parser.add_argument("--benign-share", type=float, default=0.3, help="BreaKHis: 24 of 82 patients are benign")
    parser.add_argument("--sims", type=int, default=400, help="simulated test sets per size")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--level", type=float, default=0.95)
    parser.add_argument("--mu-benign", type=float, default=1.2)
    parser.add_argument("--mu-malignant", type=float, default=1.8)
    parser.add_argument("--sd-patient", type=float, default=1.2, help="spread of patients (the clustering)")
    parser.add_argument("--sd-image", type=float, default=1.0, help="spread of images within a patient")
    parser.add_argument("--dirichlet", type=float, default=1.5, help="evenness of images per patient")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("outputs/ci_coverage"))
    parser.add_argument("--from-csv", type=Path, default=None,
                        help="only rewrite the tables from a coverage.csv (run with the same simulation options)")
    args = parser.parse_args()

    started = time.time()
    if args.from_csv:
        frame = pd.read_csv(args.from_csv)
    else:
        frame = simulate_all(args, started)
    args.out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out / "coverage.csv", index=False)
    truth = truths(1, 2, args.mu_benign, args.mu_malignant, args.sd_patient, args.sd_image)
    text = (
        f"# Coverage of {args.level:.0%} patient-bootstrap intervals ({int(frame['sims'].iloc[0])} simulated test sets "
        f"per size, {args.resamples} resamples)\n\n"
        f"Margins mu benign {args.mu_benign}, malignant {args.mu_malignant}, sd patient {args.sd_patient}, sd image "
        f"{args.sd_image}: true balanced accuracy {truth['balanced_accuracy']:.3f}, AUROC {truth['auroc']:.3f}, "
        f"specificity {truth['specificity']:.3f}. A missing or zero-width interval counts as not covering.\n\n"
        f"## histo before (old: {bootstrap.PREVIOUS.name}) and now (new: {bootstrap.DEFAULT.name})\n\n"
        f"`none (x%)`: histo gives no interval there (fewer than {bootstrap.DEFAULT.min_patients_per_class} test "
        "patients in a class); x% is what the scheme would have covered.\n\n"
        + old_vs_new(frame, bootstrap.DEFAULT)
        + "\n## Every candidate: mean coverage over metrics and image counts (worst cell)\n\n"
        + candidates(frame)
        + ("" if args.from_csv else f"\n{time.time() - started:.0f} s.\n")
    )
    (args.out / "coverage.md").write_text(text)
    print("\n" + text)
    print(f"Written: {args.out / 'coverage.md'}, {args.out / 'coverage.csv'}")


if __name__ == "__main__":
    main()
