"""Models: the timm backbone factory and the LightningModule."""

from __future__ import annotations

from pathlib import Path

from histo.models.backbone import ModelError, create_backbone
from histo.models.module import Classifier


def load_classifier(checkpoint: str | Path, map_location: str = "cpu") -> Classifier:
    """Rebuild a trained classifier from its checkpoint alone (no Hydra, no download), in eval mode."""
    model = Classifier.load_from_checkpoint(checkpoint, map_location=map_location, weights_only=True,
                                            pretrained=False, weights=None)
    return model.eval()


__all__ = ["Classifier", "ModelError", "create_backbone", "load_classifier"]
