"""augment.run_on=device: the same flips, rotation and translation as the loader's albumentations, on the batch."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
import torch
from helpers import train_config
from scipy.stats import ks_2samp

from histo.data.device_augment import AffineParams, BatchAugment, from_config
from histo.data.transforms import BORDERS, augmentations, train_transform
from histo.models import Classifier, load_classifier
from histo.stain.jitter import StainJitter
from histo.train import train

PAPER = {"hflip": 0.5, "vflip": 0.5, "rotate": 36, "translate": 0.3, "border": "reflect", "interpolation": "bilinear"}


def albumentations_fixed(image, angle, tx, ty, hflip, vflip, border):
    """The loader's transforms with every random choice pinned to the given values."""
    transform = A.Compose([
        A.HorizontalFlip(p=float(hflip)),
        A.VerticalFlip(p=float(vflip)),
        A.Affine(rotate=(angle, angle), translate_px={"x": (tx, tx), "y": (ty, ty)}, border_mode=BORDERS[border],
                 p=1.0),
    ])
    return transform(image=image)["image"]


def device_fixed(image, angle, tx, ty, hflip, vflip, border):
    batch = torch.from_numpy(image).permute(2, 0, 1)[None]
    params = AffineParams(torch.tensor([bool(hflip)]), torch.tensor([bool(vflip)]), torch.tensor([float(angle)]),
                          torch.tensor([float(tx)]), torch.tensor([float(ty)]))
    return BatchAugment(border=border).apply(batch, params)[0].permute(1, 2, 0).numpy()


@pytest.mark.parametrize("border", ["reflect", "reflect_101", "constant", "replicate"])
@pytest.mark.parametrize("params", [(0, 0, 0, 0, 0), (30, 0, 0, 0, 0), (-20, 5, -7, 1, 0), (36, 14, -14, 1, 1),
                                    (-7.5, -3, 11, 0, 1)])
def test_fixed_parameters_give_the_loaders_image(border, params):
    """Same parameters, same pixels: everywhere, borders included, within OpenCV's fixed-point rounding."""
    rng = np.random.default_rng(0)
    for shape in ((48, 48, 3), (30, 52, 3)):  # square (the cache) and not
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        expected = albumentations_fixed(image, *params, border).astype(np.float32)
        got = device_fixed(image, *params, border)
        difference = np.abs(got - expected)
        assert difference.max() <= 1 and difference.mean() < 0.02, (shape, difference.max(), difference.mean())


def dot_images(n, size=64, at=(20, 12)):
    image = np.zeros((size, size, 3), dtype=np.uint8)
    image[at[1] - 1:at[1] + 2, at[0] - 1:at[0] + 2] = 255  # a 3x3 dot off the centre, so flips move it
    return image, torch.from_numpy(image).permute(2, 0, 1)[None].repeat(n, 1, 1, 1)


def dot_positions(images: np.ndarray) -> np.ndarray:
    """(x, y) centre of mass of the dot in each image (N, H, W, 3); NaN when it left the image."""
    weight = images[..., 0].astype(np.float64)
    total = weight.sum(axis=(1, 2))
    ys, xs = np.mgrid[:images.shape[1], :images.shape[2]]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.stack([(weight * xs).sum(axis=(1, 2)) / total, (weight * ys).sum(axis=(1, 2)) / total], axis=1)


def test_random_draws_have_the_loaders_distribution():
    """Where a dot lands: the same distribution from the loader's albumentations and from the device."""
    n = 600
    augment = {**PAPER, "border": "constant"}  # constant: no reflected copies of the dot
    image, batch = dot_images(n)
    loader = train_transform(64, augment=augment, resized=True)
    loader.set_random_seed(0)
    on_loader = dot_positions(np.stack([loader(image=image)["image"] for _ in range(n)]))
    generator = torch.Generator().manual_seed(0)
    device = BatchAugment(**augment)
    on_device = dot_positions(device.apply(batch, device.draw(n, 64, 64, generator=generator))
                              .permute(0, 2, 3, 1).numpy())
    centre = np.array([31.5, 31.5])
    for positions in (on_loader, on_device):
        assert np.isfinite(positions).mean() > 0.8  # most dots stay in the image
    a, b = on_loader[np.isfinite(on_loader[:, 0])], on_device[np.isfinite(on_device[:, 0])]
    for name, x, y in (("x", a[:, 0], b[:, 0]), ("y", a[:, 1], b[:, 1]),
                       ("radius", np.hypot(*(a - centre).T), np.hypot(*(b - centre).T))):
        assert ks_2samp(x, y).pvalue > 0.001, name
    # The comparison has power: half the translation, or no flips, are told apart.
    for change, column in (({"translate": 0.15}, "radius"), ({"hflip": 0.0}, "x")):
        other = BatchAugment(**{**augment, **change})
        c = dot_positions(other.apply(batch, other.draw(n, 64, 64, generator=generator)).permute(0, 2, 3, 1).numpy())
        c = c[np.isfinite(c[:, 0])]
        x, y = (np.hypot(*(a - centre).T), np.hypot(*(c - centre).T)) if column == "radius" else (a[:, 0], c[:, 0])
        assert ks_2samp(x, y).pvalue < 1e-4, change


def test_draws_use_the_configured_ranges():
    params = BatchAugment(**PAPER).draw(4000, 60, 100, generator=torch.Generator().manual_seed(1))
    assert 0.45 < params.hflip.float().mean() < 0.55 and 0.45 < params.vflip.float().mean() < 0.55
    assert params.angle.abs().max() <= 36 and params.angle.abs().max() > 35
    assert params.tx.abs().max() == 29 and params.ty.abs().max() == 17  # int(0.3 * side) at most, whole pixels
    assert torch.equal(params.tx, params.tx.round()) and abs(np.corrcoef(params.tx, params.ty)[0, 1]) < 0.1


def test_the_loader_leaves_the_geometry_to_the_device():
    assert augmentations(**PAPER, run_on="device") == []
    jitter = augmentations(**PAPER, run_on="device", stain_jitter={"p": 0.5, "scale": 0.2, "shift": 0.05})
    assert [type(t) for t in jitter] == [StainJitter]  # stain jitter stays in the loader
    assert from_config({**PAPER, "run_on": "loader"}) is None
    assert from_config({**PAPER, "run_on": "device", "name": "paper"}) == BatchAugment(**PAPER)


def test_choices_the_device_cannot_do_name_their_keys():
    with pytest.raises(ValueError, match="augment.border='wrap'.*augment.run_on=loader"):
        from_config({**PAPER, "border": "wrap", "run_on": "device"})
    with pytest.raises(ValueError, match="augment.run_on='gpu'"):
        from_config({**PAPER, "run_on": "gpu"})
    with pytest.raises(ValueError, match="augment.run_on='gpu'"):
        augmentations(**PAPER, run_on="gpu")


def test_the_module_augments_training_batches_only():
    model = Classifier("tf_efficientnet_b0", ["benign", "malignant"], image_size=32, device_augment=PAPER)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    plain = model.preprocess(images)
    torch.manual_seed(0)
    model.train()
    augmented = model.on_after_batch_transfer({"image": images.clone()}, 0)["image"]
    assert augmented.shape == plain.shape and not torch.equal(augmented, plain)
    model.eval()
    assert torch.equal(model.on_after_batch_transfer({"image": images.clone()}, 0)["image"], plain)


def test_a_run_with_device_augmentation(synthetic_root, tmp_path, monkeypatch):
    """In a real fit the hook augments each training batch once and no validation batch; the checkpoint
    records the augmentation as plain values and loads without it mattering."""
    calls = []
    original = BatchAugment.__call__

    def counting(self, images, generator=None):
        calls.append(len(images))
        return original(self, images, generator)

    monkeypatch.setattr(BatchAugment, "__call__", counting)
    record = train(train_config(tmp_path, synthetic_root, "augment.run_on=device", "debug=limit",
                                "trainer.max_epochs=1", "trainer.limit_train_batches=2"))
    assert len(calls) == 2  # two training batches; the validation and prediction batches were not augmented
    model = load_classifier(tmp_path / record["checkpoint"])
    assert model.hparams.device_augment == PAPER and not model.training
