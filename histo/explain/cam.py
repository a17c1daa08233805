"""Class activation maps with pytorch-grad-cam, made safe: float32 eval mode, gradients that reach the
target layer even when the network's parameters are frozen, and maps that are always finite in [0, 1].

The target layer defaults to ``bn2`` of a timm EfficientNet (V1 and V2): the last convolutional stage
(``conv_head``) after its BatchNorm and activation, the counterpart of Keras' ``top_activation`` that
the paper used. CAM targets are the class logits (pytorch-grad-cam's ``ClassifierOutputTarget``),
not post-softmax probabilities, whose gradients vanish for confident predictions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, LayerCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from histo.explain.errors import ExplainError

METHODS = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "layercam": LayerCAM, "eigencam": EigenCAM}
CLASS_AGNOSTIC = {"eigencam"}  # the first principal component of the activations: no class is explained
DEFAULT_LAYER = "bn2"
FLAT_RTOL = 1e-6  # a map whose range is below this share of its largest magnitude carries no spatial signal


@dataclass
class CamResult:
    """Per image (N): ``maps`` float32 (N, H, W) in [0, 1] at the input size; ``flat`` (N,) True where
    the map had no spatial variation (zero gradient, constant activations) and is returned as zeros;
    ``logits`` (N, C) of the same forward pass; ``explained`` (N,) the class index each map explains."""

    maps: np.ndarray
    flat: np.ndarray
    logits: np.ndarray
    explained: np.ndarray


def target_layer(net: torch.nn.Module, name: str) -> torch.nn.Module:
    """The module ``name`` of ``net`` (e.g. ``bn2``, ``conv_head``, ``blocks.5``); an error lists valid names."""
    modules = dict(net.named_modules())
    if name not in modules or not name:
        top = [n for n, _ in net.named_children()]
        blocks = [f"blocks.{i}" for i in range(len(net.blocks))] if hasattr(net, "blocks") else []
        raise ExplainError(
            f"layer={name!r} is not a module of {type(net).__name__}; valid names include "
            f"{', '.join(top + blocks)} (any name from model.named_modules())."
        )
    return modules[name]


def compute_cams(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    classes: np.ndarray | None = None,
    method: str = "gradcam",
    layer: str = DEFAULT_LAYER,
) -> CamResult:
    """CAMs of ``model`` (a :class:`histo.models.Classifier`, or any module with ``.net``) for the normalised
    float batch ``inputs`` (N, 3, H, W), explaining ``classes`` (N,) or, when None, each image's predicted class."""
    if method not in METHODS:
        raise ExplainError(f"method={method!r} is not a CAM method; use one of {', '.join(METHODS)}.")
    net = getattr(model, "net", model)
    layer_module = target_layer(net, layer)
    model = model.float().eval()
    device = next(model.parameters()).device
    # The target layer's output becomes a leaf that requires grad: gradients reach it even when every
    # parameter before it is frozen (pytorch-grad-cam issue #95), and backward stops there instead of
    # running through the whole network. Registered before the CAM's own hooks, so they see the leaf.
    leaf = layer_module.register_forward_hook(lambda module, args, output: output.detach().requires_grad_(True))
    x = inputs.detach().to(device=device, dtype=torch.float32)
    targets = None if classes is None else [ClassifierOutputTarget(int(c)) for c in classes]
    raw: list[np.ndarray] = []
    cam = METHODS[method](model=model, target_layers=[layer_module])
    original = cam.get_cam_image

    def recording(*args, **kwargs):  # keep the raw map to tell a flat one from a faint one
        out = original(*args, **kwargs)
        raw.append(np.asarray(out, dtype=np.float64))
        return out

    cam.get_cam_image = recording
    try:  # not `with cam:`, whose __exit__ swallows IndexErrors
        with torch.enable_grad():
            maps = cam(input_tensor=x, targets=targets)
        logits = cam.outputs.detach().float().cpu().numpy()
    finally:
        cam.activations_and_grads.release()
        leaf.remove()
    explained = logits.argmax(axis=1) if classes is None else np.asarray(classes, dtype=np.int64)
    flat = flat_maps(np.maximum(raw[0], 0)) if raw else np.ones(len(x), dtype=bool)
    return CamResult(safe_maps(maps, flat), flat, logits, explained)


def flat_maps(raw: np.ndarray) -> np.ndarray:
    """(N,) whether each raw map (N, h, w) is flat: non-finite, all zero, or constant up to ``FLAT_RTOL``.

    >>> flat_maps(np.array([[[0.0, 0.0]], [[2.0, 2.0]], [[0.0, 1.0]], [[np.nan, 1.0]]])).tolist()
    [True, True, False, True]
    """
    n = len(raw)
    values = raw.reshape(n, -1)
    finite = np.isfinite(values).all(axis=1)
    safe = np.where(np.isfinite(values), values, 0.0)
    span = safe.max(axis=1) - safe.min(axis=1)
    scale = np.abs(safe).max(axis=1)
    return ~finite | (span <= FLAT_RTOL * scale) | (scale == 0)


def safe_maps(maps: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """Finite float32 maps in [0, 1]; flat maps become zeros (never NaN from a division by zero).

    >>> safe_maps(np.array([[[np.nan, 2.0]], [[0.2, 0.4]]]), np.array([False, True])).tolist()
    [[[0.0, 1.0]], [[0.0, 0.0]]]
    """
    out = np.nan_to_num(np.asarray(maps, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    out = np.clip(out, 0.0, 1.0)
    out[np.asarray(flat, dtype=bool)] = 0.0
    return out
