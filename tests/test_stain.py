"""Stain normalization: known stain matrices come back, failures pass through, batches equal single
images, outputs are deterministic uint8, targets round-trip, and the building blocks are exact."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from histo import CONF_DIR, config_option, group_options
from histo.data.image_file import read_rgb
from histo.data.synthetic import EOSIN, HEMATOXYLIN, _patient_stains
from histo.stain import METHODS, REASONS, StainError, StainTarget, make_normalizer
from histo.stain.lab import integer_lab_to_rgb, integer_rgb_to_lab, lab_to_rgb, luminosity, rgb_to_lab
from histo.stain.lasso import nonneg_lasso
from histo.stain.methods import NONE
from histo.stain.normalizer import register
from histo.stain.percentile import percentile

STAIN_METHODS = tuple(METHODS)  # every registered normalizer: a new one is tested with no edit here
# torchstain's reference H&E: an eosin with enough red and blue optical density for Macenko's beta.
REFERENCE_HE = np.array([[0.5626, 0.7201, 0.4062], [0.2159, 0.8012, 0.5581]])


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread, as in DataLoader workers and histo-stain: on a busy two-core machine a
    second thread makes torch's parallel reductions wait for a descheduled peer (milliseconds each)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def render_tissue(stains: np.ndarray, seed: int, h: int = 96, w: int = 128, eosin=(0.8, 1.6)) -> np.ndarray:
    """Beer-Lambert tissue with known stains (rows H, E): eosin stroma, haematoxylin nuclei without
    eosin, a strip of glass, sensor noise. Pure pixels of each stain exist, as in real tissue."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    e = rng.uniform(*eosin, (h, w))
    hc = np.zeros((h, w))
    for _ in range(40):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(3, 7)
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        hc[inside], e[inside] = rng.uniform(0.6, 1.5), 0
    glass = xx > 0.85 * w
    hc[glass], e[glass] = 0, 0
    od = hc[..., None] * stains[0] + e[..., None] * stains[1]
    return np.clip(255 * np.exp(-od) + rng.normal(0, 2, od.shape), 0, 255).round().astype(np.uint8)


def batch(*images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def angles(estimate: torch.Tensor, truth: np.ndarray) -> np.ndarray:
    """Degrees between the rows of a (2, 3) estimate and the truth."""
    a = estimate.double().numpy()
    a, b = a / np.linalg.norm(a, axis=1, keepdims=True), truth / np.linalg.norm(truth, axis=1, keepdims=True)
    return np.degrees(np.arccos(np.clip((a * b).sum(1), -1, 1)))


def fitted(method: str, **options):
    return make_normalizer(method, **options).fit(render_tissue(REFERENCE_HE, seed=100))


@pytest.fixture(scope="module")
def sources() -> list[np.ndarray]:
    """Four images of one size with other stains than the target's: what the normalizers map."""
    rng = np.random.default_rng(1)
    stains = [np.abs(REFERENCE_HE + rng.uniform(-0.1, 0.1, (2, 3))) * rng.uniform(0.7, 1.3) for _ in range(4)]
    return [render_tissue(s, seed=i) for i, s in enumerate(stains)]


# ----- known stain matrices -----

@pytest.mark.parametrize("seed", range(4))
def test_vahadane_recovers_the_stain_matrix_it_was_rendered_with(seed):
    truth = _patient_stains(np.random.default_rng(seed), 10.0)  # Ruifrok H&E, each turned by up to 10 degrees
    image = render_tissue(truth, seed=seed, eosin=(0.2, 0.9))
    matrix, failed = make_normalizer("vahadane").stain_matrix(batch(image).reshape(1, 3, -1))
    assert failed == [None]
    assert angles(matrix[0], truth).max() < 1.0  # rows in order: haematoxylin first


def test_macenko_recovers_the_stain_matrix_it_was_rendered_with():
    normalizer = make_normalizer("macenko")
    for seed in range(3):
        pixels = batch(render_tissue(REFERENCE_HE, seed=seed)).reshape(1, 3, -1)
        matrix, failed = normalizer.stain_matrix(pixels)
        assert failed == [None]
        assert angles(matrix[0], REFERENCE_HE).max() < 5.0  # its 1st/99th-percentile angles sit a little inside


def test_vahadane_on_the_synthetic_dataset_finds_each_patients_haematoxylin(synthetic_root):
    """The synthetic BreaKHis records each patient's true stains. Its stroma always carries some
    haematoxylin, which a sparse two-stain model folds into eosin, so eosin is only roughly right."""
    patients = json.loads((synthetic_root / "synthetic.json").read_text())["patients"]
    normalizer = make_normalizer("vahadane", min_tissue=0.0)
    for patient in patients[::3]:
        image = read_rgb(next((synthetic_root / patient["folder"] / "400X").glob("*.png")))
        matrix, failed = normalizer.stain_matrix(batch(image).reshape(1, 3, -1))
        assert failed == [None]
        h_angle, e_angle = angles(matrix[0], np.asarray(patient["stains"]))
        assert h_angle < 8.0 and e_angle < 20.0
        assert angles(matrix[0], np.stack([HEMATOXYLIN, EOSIN]))[0] < 15.0


# ----- images that cannot be normalized -----

def awkward_images(h: int = 96, w: int = 128) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "blank": np.full((h, w, 3), 255, np.uint8),
        "black": np.zeros((h, w, 3), np.uint8),
        "near_white": np.clip(245 + rng.normal(0, 3, (h, w, 3)), 0, 255).astype(np.uint8),
        "single_colour": np.broadcast_to(np.array([180, 90, 160], np.uint8), (h, w, 3)).copy(),
        "one_percent_tissue": _spot(render_tissue(REFERENCE_HE, seed=3, h=h, w=w), 0.01),
    }


def _spot(tissue: np.ndarray, share: float) -> np.ndarray:
    """White glass with a corner of ``tissue`` covering ``share`` of the image."""
    out = np.full_like(tissue, 255)
    side = int(np.sqrt(share * tissue.shape[0] * tissue.shape[1]))
    out[:side, :side] = tissue[:side, :side]
    return out


@pytest.mark.parametrize("method", STAIN_METHODS)
def test_images_without_enough_tissue_pass_through_unchanged_and_are_counted(method, sources):
    normalizer = fitted(method)
    awkward = awkward_images()
    images = batch(sources[0], *awkward.values(), sources[1])
    out, failed = normalizer.normalize(images)
    assert failed[0] is None and failed[-1] is None
    assert all(reason in REASONS for reason in failed[1:-1])
    assert torch.equal(out[1:-1], images[1:-1])  # unchanged, byte for byte
    assert not torch.equal(out[0], images[0])  # the good ones are still normalized
    assert normalizer.counts["normalized"] == 2
    assert sum(normalizer.counts[r] for r in REASONS) == len(awkward)


@pytest.mark.parametrize("method", STAIN_METHODS)
@pytest.mark.parametrize("shape", [(1, 1), (3, 4), (7, 5), (0, 5)])
def test_tiny_images_pass_through(method, shape):
    image = np.random.default_rng(0).integers(60, 200, (*shape, 3), dtype=np.uint8)
    normalizer = fitted(method)
    out = normalizer(image, name="tiny.png")
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.array_equal(out, image)


def test_on_failure_raise_names_the_image():
    normalizer = fitted("vahadane", on_failure="raise")
    with pytest.raises(StainError, match=r"blank\.png.*stain\.on_failure"):
        normalizer.normalize(batch(awkward_images()["blank"]), names=["blank.png"])


def test_a_target_without_tissue_is_an_error():
    with pytest.raises(StainError, match="stain.target"):
        make_normalizer("vahadane").fit(awkward_images()["blank"], source=["white.png"])


# ----- batches, determinism, dtype -----

@pytest.mark.parametrize("method", STAIN_METHODS)
def test_a_batch_gives_the_same_bytes_as_one_image_at_a_time(method, sources):
    normalizer = fitted(method)
    images = batch(*sources)
    together = normalizer.transform(images)
    alone = torch.cat([normalizer.transform(images[i : i + 1]) for i in range(len(sources))])
    assert torch.equal(together, alone)


@pytest.mark.parametrize("method", STAIN_METHODS)
def test_output_is_uint8_of_the_input_shape_deterministic_and_moves_towards_the_target(method, sources):
    target = render_tissue(REFERENCE_HE, seed=100)
    first = make_normalizer(method).fit(target)
    images = batch(*sources)
    out = first.transform(images)
    assert out.dtype == torch.uint8 and out.shape == images.shape and out.device == images.device
    again = make_normalizer(method).fit(target).transform(images.clone())
    assert torch.equal(out, again)  # same input, new normalizer: identical bytes
    assert torch.equal(images, batch(*sources))  # the input is not modified

    def mean_colour(x):
        return x.double().mean(dim=(-1, -2))

    t = mean_colour(batch(target))
    assert ((mean_colour(out) - t).abs().mean() < (mean_colour(images) - t).abs().mean())
    assert out.float().std() > 5  # not collapsed to one colour (what NaNs would give)


@pytest.mark.parametrize("method", STAIN_METHODS)
def test_measured_values_are_finite(method, sources):
    normalizer = fitted(method)
    measured = normalizer._measure(batch(*sources).reshape(len(sources), 3, -1))
    assert measured.failed == [None] * len(sources)
    for name in normalizer.target_keys:
        assert torch.isfinite(measured.values[name]).all()


def test_the_numpy_call_matches_the_batch(sources):
    normalizer = fitted("vahadane")
    out = normalizer(sources[0], name="a.png")
    assert out.shape == sources[0].shape and out.dtype == np.uint8 and out.flags["C_CONTIGUOUS"]
    assert np.array_equal(out, normalizer.transform(batch(sources[0]))[0].permute(1, 2, 0).numpy())


# ----- targets -----

@pytest.mark.parametrize("method", STAIN_METHODS)
def test_a_saved_target_round_trips(method, sources, tmp_path):
    normalizer = fitted(method)
    path = normalizer.target.save(tmp_path / "stain_target.json")
    loaded = StainTarget.load(path)
    assert loaded == normalizer.target and loaded.fingerprint == normalizer.target.fingerprint
    assert loaded.method == method and set(loaded.values) == set(normalizer.target_keys)
    again = make_normalizer(method).set_target(loaded)
    images = batch(*sources)
    assert torch.equal(again.transform(images), normalizer.transform(images))


def test_a_run_record_rebuilds_the_runs_normalizer(sources, tmp_path):
    """What training records (stain_record) is enough to rebuild the normalizer (normalizer_from_record)."""
    from histo.stain.methods import normalizer_from_record, stain_record

    normalizer = make_normalizer("macenko", beta=0.2).fit(sources[0], source=["a.png"])
    record = stain_record({"method": "macenko", "target": "a.png"}, normalizer, tmp_path)
    again = normalizer_from_record(json.loads(json.dumps(record)), tmp_path)
    images = batch(*sources)
    assert torch.equal(again.transform(images), normalizer.transform(images)) and again.options["beta"] == 0.2
    assert normalizer_from_record({"method": "none"}, tmp_path) is None
    strict = make_normalizer("macenko", beta=0.2, on_failure="raise").fit(sources[0], source=["a.png"])
    assert strict.target.options["on_failure"] == "raise"  # restored from a record, but no other pixels:
    assert strict.target.fingerprint == normalizer.target.fingerprint  # the same image cache serves both
    assert make_normalizer("macenko", beta=0.3).fit(sources[0]).target.fingerprint != normalizer.target.fingerprint
    with pytest.raises(StainError, match="missing"):
        normalizer_from_record(record, tmp_path / "elsewhere")


def test_targets_fit_on_several_images_and_check_their_method(sources):
    one = make_normalizer("vahadane").fit(sources[0], source=["a.png"])
    two = make_normalizer("vahadane").fit([sources[0], sources[1][:50]], source=["a.png", "b.png"])
    assert two.target.source == ["a.png", "b.png"]
    assert two.target.values != one.target.values and two.target.fingerprint != one.target.fingerprint
    with pytest.raises(ValueError, match="macenko"):
        make_normalizer("macenko").set_target(one.target)
    with pytest.raises(ValueError, match="uint8"):
        make_normalizer("vahadane").fit(sources[0].astype(np.float32))


def test_the_registered_methods_are_the_conf_stain_options():
    """A method is its module (a @register-ed class) and its conf/stain option: each has the other, by name,
    however histo.stain is first imported; none is an option but no normalizer (None)."""
    options = {name: config_option("stain", name).method for name in group_options("stain")}
    assert options == {name: name for name in (NONE, *METHODS)} and NONE not in METHODS
    assert all(cls.method == name for name, cls in METHODS.items())
    code = ("import json, histo.stain.reinhard; from histo.stain.normalizer import METHODS; "
            "print(json.dumps(list(METHODS)))")  # one method module first: the package still imports them all
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(CONF_DIR).parent)})
    assert sorted(json.loads(done.stdout)) == sorted(METHODS), done.stderr[-2000:]
    with pytest.raises(ValueError, match="stain.method=none means no normalizer"):
        make_normalizer(NONE)
    with pytest.raises(ValueError, match="stain.method"):
        make_normalizer("bogus")
    with pytest.raises(TypeError, match="registered twice"):
        register(type("Again", (METHODS["reinhard"],), {}))


# ----- building blocks -----

def test_closed_form_lasso_satisfies_the_optimality_conditions():
    rng = np.random.default_rng(0)
    d = torch.tensor(np.abs(rng.normal(size=(5, 3, 2))), dtype=torch.float64)
    x = torch.tensor(np.abs(rng.normal(size=(5, 3, 400))), dtype=torch.float64) * rng.uniform(0, 2)
    lam = 0.1
    b = d.transpose(1, 2) @ x
    a = torch.stack(nonneg_lasso(b[:, 0], b[:, 1], d.transpose(1, 2) @ d, lam), 1)
    grad = d.transpose(1, 2) @ (d @ a - x) + lam  # gradient of 0.5||x - Da||^2 + lam * sum(a)
    assert (a >= 0).all()
    assert torch.allclose(grad[a > 0], torch.zeros(()).double(), atol=1e-9)  # stationary where positive
    assert (grad[a == 0] >= -1e-9).all()  # cannot improve by increasing a zero


def test_percentile_equals_numpys_including_ties_and_large_rows():
    rng = np.random.default_rng(0)
    for shape in [(2, 3, 200_000), (1, 2, 70_001), (2, 1), (1, 1), (3, 17)]:
        values = rng.gamma(2.0, size=shape).astype(np.float32)
        values[..., : shape[-1] // 3] = 1.0  # many ties
        ours = percentile(torch.from_numpy(values), 99).numpy()
        assert np.allclose(ours, np.percentile(values.astype(np.float64), 99, axis=-1), rtol=0, atol=1e-6)


def test_lab_conversions_equal_opencvs_8_bit_ones():
    """On the CPU OpenCV converts; elsewhere the fixed-point torch code does, checked here against it."""
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, (1, 200_000, 3), dtype=np.uint8)
    tensor = torch.from_numpy(colours).permute(2, 0, 1)[None]
    lab = cv2.cvtColor(colours, cv2.COLOR_RGB2LAB)
    assert np.array_equal(rgb_to_lab(tensor)[0].permute(1, 2, 0).numpy(), lab)
    assert np.array_equal(luminosity(tensor)[0].numpy() * 255, lab[..., 0].astype(np.float32))
    ours = integer_rgb_to_lab(tensor)[0].permute(1, 2, 0).numpy()
    assert np.array_equal(ours[..., 0], lab[..., 0])
    assert np.abs(ours.astype(int) - lab).max() <= 1 and (ours != lab).mean() < 1e-3
    back = cv2.cvtColor(colours, cv2.COLOR_LAB2RGB)  # the colours read as L*a*b*
    assert np.array_equal(lab_to_rgb(tensor)[0].permute(1, 2, 0).numpy(), back)
    assert np.array_equal(integer_lab_to_rgb(tensor)[0].permute(1, 2, 0).numpy(), back)


# ----- the real sample -----

@pytest.fixture(scope="module")
def real_images(real_root):
    files = sorted(real_root.rglob("*.png"))[::60][:4]
    return [read_rgb(f) for f in files]


@pytest.mark.parametrize("method", STAIN_METHODS)
def test_real_images_normalize_deterministically_in_batches(method, real_images):
    normalizer = make_normalizer(method).fit(real_images[0])
    shape = real_images[1].shape
    same = [im for im in real_images[1:] if im.shape == shape]
    images = batch(*same)
    out, failed = normalizer.normalize(images)
    assert failed == [None] * len(same)
    assert torch.equal(out, normalizer.transform(images))
    assert torch.equal(out[:1], normalizer.transform(images[:1]))
    if "stain_matrix" in normalizer.target.values:  # methods that separate stains (not Reinhard's colour transfer)
        matrix = torch.tensor(normalizer.target.values["stain_matrix"])
        assert matrix[0, 0] > matrix[1, 0]  # haematoxylin (more red optical density) first
        assert angles(matrix, REFERENCE_HE).max() < 25
