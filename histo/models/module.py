"""The LightningModule: one EfficientNet classifier, its optimisation and its per-epoch metrics.

Batches carry uint8 images; :meth:`Classifier.on_after_batch_transfer` turns them into the
normalised float input on the device, so the loader moves four times fewer bytes. In training it
first applies the batch augmentation of ``augment.run_on=device`` (:mod:`histo.data.device_augment`):
Lightning calls only the module's ``on_after_batch_transfer`` (not the datamodule's), so
everything done to a batch on the device is in that one hook, in this order. Checkpoints hold
plain hyperparameters (the augmentation too), so :func:`histo.models.load_classifier` rebuilds a
model without Hydra. ``compile`` compiles the network's forward in place when fitting starts
(``nn.Module.compile``), so state-dict keys stay the same and checkpoints load without compiling.
"""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from histo.data.device_augment import BatchAugment
from histo.evaluation.epoch_metrics import epoch_metrics
from histo.models.backbone import create_backbone, normalization

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}  # optim.optimizer
SCHEDULERS = ("none", "cosine")  # optim.scheduler

class Classifier(pl.LightningModule):
    def __init__(
        self,
        timm_name: str,
        class_names: list[str],
        image_size: int,
        model_name: str | None = None,
        drop_rate: float = 0.3,
        freeze_bn: bool = True,
        frozen_layers: int = 0,
        pretrained: bool = False,
        weights: str | None = None,
        optimizer: str = "adam",
        backbone_lr: float = 1e-4,
        head_lr: float = 1e-3,
        weight_decay: float = 0.0,
        scheduler: str = "none",
        warmup_epochs: float = 0.0,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        channels_last: bool = False,
        device_augment: dict | None = None,
        compile: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.net = create_backbone(timm_name, len(class_names), drop_rate, pretrained, weights, freeze_bn,
                                   frozen_layers)
        if mean is None or std is None:
            self.hparams.mean, self.hparams.std = normalization(self.net)
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.register_buffer("_mean", 255 * torch.tensor(self.hparams.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("_std", 255 * torch.tensor(self.hparams.std).view(1, -1, 1, 1), persistent=False)
        self.train_metrics = epoch_metrics(len(class_names), "train/")
        self.val_metrics = epoch_metrics(len(class_names), "val/")
        self.save_features = False  # set by the trainer entry point for feature-level stacking
        # augment.run_on=device: flips, rotation, translation of training batches (plain values in hparams)
        self.batch_augment = BatchAugment(**device_augment) if device_augment else None
        self._augment_generator: torch.Generator | None = None
        self._augment_generator_state: torch.Tensor | None = None  # from a checkpoint, until the generator exists

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a normalised float batch (what :meth:`preprocess` returns)."""
        return self.net(x)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (or float) (N, 3, H, W) in 0-255 to the normalised float input of the network."""
        x = (images.float() - self._mean) / self._std
        return x.contiguous(memory_format=torch.channels_last) if self.hparams.channels_last else x

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """A uint8 batch on the device to the network's input: in training (the module in train mode,
        as Keras' augmentation layers), the batch augmentation first; then :meth:`preprocess`."""
        if batch["image"].dtype == torch.uint8:
            images = batch["image"]
            if self.training and self.batch_augment is not None:
                images = self.batch_augment(images, self._generator(images.device))
            batch["image"] = self.preprocess(images)
        return batch

    def _generator(self, device: torch.device) -> torch.Generator:
        """The batch augmentation's random numbers: seeded from the run's seed and the process rank, so
        DDP processes draw different parameters (the global generators are seeded alike on every rank)."""
        if self._augment_generator is None or self._augment_generator.device != device:
            seed = torch.initial_seed() + 1_000_003 * self.global_rank
            self._augment_generator = torch.Generator(device).manual_seed(seed)
            if self._augment_generator_state is not None:  # resumed: continue the interrupted run's draws
                self._augment_generator.set_state(self._augment_generator_state)
                self._augment_generator_state = None
        return self._augment_generator

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self._augment_generator is not None:
            checkpoint["augment_generator"] = self._augment_generator.get_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._augment_generator_state = checkpoint.get("augment_generator")

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.hparams.compile:
            self.net.compile()  # in place: the forward is compiled, parameter names do not change

    def _step(self, batch: dict, metrics) -> torch.Tensor:
        logits = self(batch["image"])
        loss = F.cross_entropy(logits, batch["label"])
        metrics.update(logits.detach().float().softmax(dim=1), batch["label"])
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self._step(batch, self.train_metrics)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(batch["label"]))
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss = self._step(batch, self.val_metrics)
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=len(batch["label"]))
        self.log_dict(self.val_metrics, on_epoch=True)

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        features = self.net.forward_head(self.net.forward_features(batch["image"]), pre_logits=True)
        out = {"index": batch["index"], "logits": self.net.get_classifier()(features).float()}
        if self.save_features:
            out["features"] = features.float()
        return out

    def configure_optimizers(self):
        hp = self.hparams
        head = list(self.net.get_classifier().parameters())
        head_ids = {id(p) for p in head}
        backbone = [p for p in self.net.parameters() if p.requires_grad and id(p) not in head_ids]
        groups = [{"params": backbone, "lr": hp.backbone_lr}, {"params": head, "lr": hp.head_lr}]
        if hp.optimizer not in OPTIMIZERS:
            raise ValueError(f"optim.optimizer={hp.optimizer!r} is not valid; use one of {', '.join(OPTIMIZERS)}.")
        optimizer = OPTIMIZERS[hp.optimizer](groups, weight_decay=hp.weight_decay)
        if hp.scheduler == "none":
            return optimizer
        if hp.scheduler not in SCHEDULERS:
            raise ValueError(f"optim.scheduler={hp.scheduler!r} is not valid; use one of {', '.join(SCHEDULERS)}.")
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(hp.warmup_epochs * total / max(1, self.trainer.max_epochs))

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
