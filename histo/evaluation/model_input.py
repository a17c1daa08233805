"""A run's model input: how an image became what its model saw in evaluation, read from the run directory.

Everything is read, never re-chosen: the square size (run.json ``image_size``), the resize
interpolation (``config.data.interpolation``) and the fitted stain normalizer (run.json ``stain`` and
the saved ``stain_target.json``). Applying it is the evaluation path of training
(:class:`~histo.data.dataset.ImageDataset` with :func:`~histo.data.transforms.eval_transform`): stain
normalization at full resolution, then the squash resize; the model's mean/std normalization follows on
the device (:meth:`histo.models.Classifier.preprocess`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from histo.data.cache.keying import stain_key
from histo.data.transforms import eval_transform


@dataclass(frozen=True)
class ModelInput:
    image_size: int
    interpolation: str
    stain: object | None = field(default=None, compare=False)  # a fitted histo.stain normalizer, or None
    resize: object = field(init=False, compare=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "resize", eval_transform(self.image_size, self.interpolation))

    @property
    def key(self) -> tuple:
        """Equal keys give equal inputs: members sharing a key share one prepared image."""
        return self.image_size, self.interpolation, stain_key(self.stain)

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, str | None]:
        """RGB uint8 (H, W, 3) at any size -> the model's uint8 (S, S, 3) input, and why stain normalization
        left the image unchanged (a key of :data:`histo.stain.normalizer.REASONS`) or None."""
        reason = None
        if self.stain is not None:
            image, reason = self.stain.normalize_image(image)
        return self.resize(image=image)["image"], reason

    def describe(self) -> dict:
        """What a consumer needs to prepare pixels (the export sidecar): size, resize, stain method and target."""
        target = None if self.stain is None else self.stain.target.to_dict()
        return {"image_size": self.image_size, "resize": "squash (aspect ratio not kept, no crop)",
                "interpolation": self.interpolation, "interpolation_library": "OpenCV (cv2.resize)",
                "stain_method": "none" if self.stain is None else self.stain.method, "stain_target": target}


def model_input(run_dir: str | Path, record: dict) -> ModelInput:
    """The model input of the run at ``run_dir`` whose run.json is ``record``."""
    from histo.stain.methods import normalizer_from_record  # only stain-normalized runs need the stain package

    interpolation = ((record.get("config") or {}).get("data") or {}).get("interpolation", "bilinear")
    return ModelInput(int(record["image_size"]), interpolation, normalizer_from_record(record.get("stain"), run_dir))

