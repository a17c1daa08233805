"""From a data config to loaders: resolve the root, index it, split it, and serve the splits."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from histo.data.breakhis import DataError, Index, build_index, class_names
from histo.data.dataset import AugmentationOrder, ImageDataset
from histo.data.splits import Split, make_split, read_split
from histo.data.synthetic import SyntheticSpec, write_dataset
from histo.data.transforms import eval_transform, train_transform
from histo.evaluation.run_dir import PREDICTED_SPLITS

log = logging.getLogger(__name__)


def loader_workers(data_cfg) -> int:
    """``data.num_workers``, or when it is null min(8, CPU cores): the same for training and histo-prepare."""
    return data_cfg.num_workers if data_cfg.num_workers is not None else min(8, os.cpu_count() or 1)


def resolve_root(root: str | None, synthetic: dict, synthetic_dir: str | Path) -> Path:
    """``data.root``, or when it is null the built-in synthetic dataset (written on first use)."""
    if root:
        return Path(root).expanduser().resolve()  # absolute: run.json must find it from anywhere
    spec = SyntheticSpec(**synthetic)
    key = "-".join(f"{v}" for v in vars(spec).values())
    path = Path(synthetic_dir) / f"synthetic-{key}"
    if not (path / "synthetic.json").is_file():
        log.info("data.root is null: writing the built-in synthetic dataset to %s", path)
    return write_dataset(path, spec).resolve()


@dataclass
class Data:
    """An indexed dataset with its split: what a run trains and predicts on."""

    index: Index
    split: Split
    task: str

    @property
    def class_names(self) -> tuple[str, ...]:
        return class_names(self.task)

    @property
    def table(self) -> pd.DataFrame:
        """One row per image: index columns, ``label`` for the task, and ``split``."""
        frame = self.index.frame.assign(label=self.index.labels(self.task).to_numpy())
        return frame.merge(self.split.frame, on="image", validate="one_to_one")

    def missing_classes(self) -> list[str]:
        """What would make the run's numbers meaningless: a dataset of one class, or a split without
        images of some class the dataset has (empty when there is none)."""
        table, names = self.table, self.class_names
        present = sorted(set(table["label"]))
        if len(present) < 2:
            only = ", ".join(names[i] for i in present) or "none"
            return [f"the dataset under data.root={self.index.root} has images of one class only ({only})"]
        problems = []
        for split in ("train", "val", "test"):
            missing = [names[i] for i in present if i not in set(table.loc[table["split"] == split, "label"])]
            if missing:
                problems.append(f"the {split} split has no {' or '.join(missing)} images")
        return problems

    def summary(self) -> dict:
        return {
            **self.index.summary(),
            "skipped_files": [{"image": p, "reason": why} for p, why in self.index.skipped],
            "task": self.task,
            "class_names": list(self.class_names),
        }


def load_data(data_cfg, split_cfg, synthetic_dir: str | Path) -> Data:
    """Index ``data.root`` and split it as ``split`` says."""
    root = resolve_root(data_cfg.root, dict(data_cfg.synthetic), synthetic_dir)
    index = build_index(root, data_cfg.magnification, data_cfg.patient_key)
    if split_cfg.get("file"):
        split = read_split(split_cfg.file, index)
    else:
        split = make_split(
            index,
            data_cfg.task,
            split_cfg.strategy,
            seed=split_cfg.seed,
            val_ratio=split_cfg.val_ratio,
            test_ratio=split_cfg.test_ratio,
            folds=split_cfg.get("folds"),  # patient_kfold's own keys: the other split options have none
            fold=split_cfg.get("fold"),
        )
    counts = split.counts()
    for name in ("train", "val", "test"):
        if counts[name] == 0:
            raise DataError(
                f"The {name} split is empty ({counts}); use more data or change split.val_ratio/split.test_ratio."
            )
    return Data(index, split, data_cfg.task)


class BreakHisDataModule(pl.LightningDataModule):
    """Train, val and test loaders of one :class:`Data`. ``batch_size`` is the global batch: under
    DDP each process loads ``batch_size / world_size`` images per step. Prediction serves the
    ``predict_splits`` (val and test), one loader each in that order, without augmentation. ``stain``
    normalizes every split (as the paper did).
    ``cache`` (a :class:`histo.data.cache.ImageCache` at ``image_size``, stain-normalized with
    ``stain``) replaces reading, normalizing and resizing PNGs. The training loader applies the
    augmentations ``augment.run_on=loader`` puts there; with ``augment.run_on=device`` the module applies
    the geometric ones to the batch (:class:`histo.models.Classifier`, ``on_after_batch_transfer``)."""

    predict_splits: tuple[str, ...] = PREDICTED_SPLITS  # the split of each predict loader, in loader order

    def __init__(
        self,
        data: Data,
        image_size: int,
        interpolation: str = "bilinear",
        augment: dict | None = None,
        batch_size: int = 32,
        num_workers: int = 4,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        stain=None,
        cache=None,
    ):
        super().__init__()
        self.data = data
        self.stain = stain  # a fitted histo.stain normalizer for every split's images, or None
        self.cache = cache  # a histo.data.cache.ImageCache of those images at image_size, or None
        if cache is not None and cache.size != image_size:
            raise ValueError(f"The image cache {cache.directory} holds {cache.size}px images, the model needs {image_size}px.")
        self.image_size = image_size
        self.interpolation = interpolation
        self.augment = dict(augment or {})
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self._table = data.table
        self._per_device_batch = batch_size

    def setup(self, stage: str | None = None) -> None:
        world = self.trainer.world_size if self.trainer is not None else 1
        if self.batch_size % world:
            raise ValueError(f"data.batch_size={self.batch_size} must be divisible by the {world} DDP processes.")
        self._per_device_batch = self.batch_size // world

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.data.class_names

    def split_table(self, name: str) -> pd.DataFrame:
        """The rows of one split, in the order its dataset serves them."""
        return self._table.loc[self._table["split"] == name].reset_index(drop=True)

    def dataset(self, name: str) -> ImageDataset:
        cached = self.cache is not None
        if name == "train":
            transform = train_transform(self.image_size, self.interpolation, self.augment, resized=cached)
        else:
            transform = eval_transform(self.image_size, self.interpolation, resized=cached)
        return ImageDataset(self.data.index.root, self.split_table(name), transform,
                            stain=None if cached else self.stain, cache=self.cache)

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        dataset = self.dataset(name)
        order = AugmentationOrder(len(dataset)) if shuffle else None
        return DataLoader(
            dataset,
            batch_size=self._per_device_batch,
            sampler=order,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            # each loader iterator draws a base seed: from its own generator, so that starting an epoch does
            # not move torch's global one (dropout draws from it; a resumed run restores it)
            generator=torch.Generator().manual_seed(order.seed) if order is not None else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def predict_dataloader(self) -> list[DataLoader]:
        return [self._loader(name, shuffle=False) for name in self.predict_splits]
