"""Every option of every config group composes, as users will type it."""

from __future__ import annotations

import pytest
from helpers import compose_config
from hydra.utils import instantiate

from histo import config_option, group_options

GROUPS = ["data", "split", "model", "augment", "optim", "stain", "trainer", "callbacks", "logger", "debug"]


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in GROUPS for o in group_options(g)])
def test_every_option_composes(group, option, tmp_path):
    cfg = compose_config("train", [f"{group}={option}"], tmp_path)
    assert cfg.model.image_size > 0 and cfg.data.batch_size > 0
    if group == "model":  # what scripts read without composing a command is what the command composes
        assert config_option("model", option) == cfg.model


@pytest.mark.parametrize("experiment", group_options("experiment"))
def test_every_experiment_composes(experiment, tmp_path):
    cfg = compose_config("train", [f"experiment={experiment}"], tmp_path)
    assert cfg.name != "default"


@pytest.mark.parametrize("trainer", ["cpu", "ddp_sim", "default"])
def test_cpu_trainers_instantiate(trainer, tmp_path):
    cfg = compose_config("train", [f"trainer={trainer}", "trainer.accelerator=cpu"], tmp_path)
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert trainer.max_epochs == 40  # the paper's default


def test_defaults_are_the_papers_recipe(tmp_path):
    cfg = compose_config("train", [], tmp_path)
    assert cfg.split.strategy == "image" and (cfg.split.val_ratio, cfg.split.test_ratio) == (0.15, 0.15)
    assert (cfg.optim.backbone_lr, cfg.optim.head_lr, cfg.optim.scheduler) == (1e-4, 1e-3, "none")
    assert (cfg.data.batch_size, cfg.trainer.max_epochs, cfg.model.freeze_bn) == (32, 40, True)
    assert (cfg.augment.rotate, cfg.augment.translate, cfg.augment.border) == (36, 0.3, "reflect")
    assert cfg.callbacks.model_checkpoint.monitor == "val/accuracy" and cfg.data.magnification == "all"
