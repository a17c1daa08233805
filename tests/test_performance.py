"""The speed options: channels_last, mixed precision, torch.compile (checkpoints stay plain), loader settings."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from helpers import compose_config, train_config

from histo.data.datamodule import BreakHisDataModule, load_data
from histo.models import Classifier, load_classifier
from histo.train import train

CLASSES = ["benign", "malignant"]


def test_channels_last_converts_the_network_and_its_input():
    model = Classifier("tf_efficientnet_b0", CLASSES, image_size=32, channels_last=True)
    assert model.net.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    x = model.on_after_batch_transfer({"image": torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)}, 0)["image"]
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    plain = Classifier("tf_efficientnet_b0", CLASSES, image_size=32)
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), plain.eval()(x.contiguous()), rtol=1e-4, atol=1e-4)


def test_bf16_mixed_and_channels_last_train_on_cpu(synthetic_root, tmp_path):
    record = train(train_config(tmp_path, synthetic_root, "trainer.precision=bf16-mixed", "model.channels_last=true",
                                "debug=limit", "trainer.max_epochs=1"))
    assert record["trainer"]["precision"] == "bf16-mixed"
    assert record["metrics"]["test"]["overall"]["n_images"] > 0
    assert load_classifier(tmp_path / record["checkpoint"]).hparams.channels_last is True


def test_compile_keeps_parameter_names_so_checkpoints_load_without_it(tmp_path):
    """model.compile compiles the network's forward in place when fitting starts; the state dict keeps its
    keys (no ``_orig_mod.``), so a checkpoint of a compiled run loads into a plain model."""
    compiled = Classifier("tf_efficientnet_b0", CLASSES, image_size=32, compile=True)
    assert compiled.net._compiled_call_impl is None  # nothing compiled before fitting (or when loading)
    compiled.setup("fit")
    assert compiled.net._compiled_call_impl is not None
    keys = list(compiled.state_dict())
    assert not any("_orig_mod" in k for k in keys)
    assert keys == list(Classifier("tf_efficientnet_b0", CLASSES, image_size=32).state_dict())
    checkpoint = tmp_path / "compiled.ckpt"
    torch.save({"state_dict": compiled.state_dict(), "hyper_parameters": dict(compiled.hparams),
                "pytorch-lightning_version": pl.__version__}, checkpoint)
    loaded = load_classifier(checkpoint)
    assert loaded.hparams.compile is True and loaded.net._compiled_call_impl is None
    assert torch.equal(loaded.net.conv_stem.weight, compiled.net.conv_stem.weight)


def test_loader_options_reach_the_dataloaders(synthetic_root, tmp_path):
    cfg = compose_config("train", [f"data.root={synthetic_root}", "data.cache=off"], tmp_path)
    assert cfg.data.persistent_workers is True and cfg.data.pin_memory is None and cfg.model.compile is False
    data = load_data(cfg.data, cfg.split, tmp_path)
    module = BreakHisDataModule(data, 32, num_workers=2, pin_memory=True, persistent_workers=True, batch_size=8)
    loader = module.train_dataloader()
    assert loader.num_workers == 2 and loader.pin_memory and loader.persistent_workers
    off = BreakHisDataModule(data, 32, num_workers=0, pin_memory=None, persistent_workers=True).train_dataloader()
    assert not off.persistent_workers and off.pin_memory == torch.cuda.is_available()  # none without workers
