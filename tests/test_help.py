"""Every command's --help describes that command: its own description, the config groups it composes
with their options (read from conf/, so a new option needs no edit here), and its own options."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from histo import CONF_DIR, group_options

REPO = Path(CONF_DIR).parent
SCRIPTS = (REPO / "pyproject.toml").read_text().split("[project.scripts]")[1].split("\n[")[0]
COMMANDS = dict(re.findall(r'^(histo-[\w-]+) = "([\w.]+:\w+)"', SCRIPTS, re.M))  # prog -> module:function (3.10: no tomllib)

SCRIPT = """
import contextlib, importlib, io, json, sys
from hydra.core.global_hydra import GlobalHydra
texts = {}
for prog, target in json.loads(sys.argv[1]).items():
    module, function = target.split(":")
    GlobalHydra.instance().clear()
    sys.argv, out = [prog, "--help"], io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):  # some exit 0 after the help
        getattr(importlib.import_module(module), function)()
    texts[prog] = out.getvalue()
print(json.dumps(texts))
"""


@pytest.fixture(scope="module")
def helps():
    done = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(COMMANDS)], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("prog", sorted(COMMANDS))
def test_help_describes_the_command_its_groups_and_its_options(helps, prog):
    text = helps[prog]
    assert text.startswith(f"{prog}: "), text[:200]  # its own description first, not "... is powered by Hydra"
    config_name = text.split("The comments in\nconf/")[1].split(".yaml")[0]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name=config_name, return_hydra_config=True)
        groups = {g: c for g, c in cfg.hydra.runtime.choices.items()
                  if not (g == "hydra" or g.startswith("hydra/")) and group_options(g)}
        for group, chosen in groups.items():  # each group it composes, with every option of that group
            line = text.split(f"\n{group} (now {chosen or 'none'}): ")[1].split("\n", 1)[0]
            listed = " ".join(text.split(f"\n{group} (now ")[1].split("\n    ")[: len(group_options(group))])
            assert all(option in listed for option in group_options(group)), (group, line)
    if groups:
        assert "== Groups (group=option) ==" in text
    else:
        assert "== Groups" not in text  # e.g. histo-predict: no training groups
    options = text.split("== Options (key=value) ==\n")[1]
    keys = [key for key in cfg if key != "hydra"]
    assert all(f"\n{key}:" in f"\n{options}" or f"\n'{key}':" in f"\n{options}" for key in keys)  # as composed


def test_only_the_commands_own_groups_are_listed(helps):
    assert "model (now v1_b0): " in helps["histo-train"] and "split (now image): " in helps["histo-train"]
    assert "model (now" not in helps["histo-predict"] and "augment (now" not in helps["histo-ensemble"]
    assert "members (now none): all, v1, v2" in helps["histo-ensemble"]
    groups = helps["histo-train"].split("== Options")[0]
    assert "_efficientnet" not in groups and "_recipe" not in groups  # shared bases, not options
