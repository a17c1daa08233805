"""What ``--help`` prints for every histo command (``conf/hydra/help/histo.yaml``).

Hydra's default help lists every config group under ``conf/``, so each command would show the
training groups. Instead each command's help shows its own description (``hydra.help.header`` in its
config), the groups that config composes with their options (the ``histo_groups`` resolver below,
read from ``conf/`` so a new option appears without editing any help text) and its options.
"""

from __future__ import annotations

import textwrap

from omegaconf import OmegaConf

from histo import group_options


def groups_section(choices) -> str:
    """``== Groups ==`` with one line per group the command composes (Hydra's own groups aside): its options
    and the one chosen now; empty for a command that composes none."""
    lines = []
    for group, chosen in sorted(choices.items()):
        options = [] if group == "hydra" or group.startswith("hydra/") else group_options(group)
        if options:
            text = f"{group} (now {chosen or 'none'}): {', '.join(options)}"
            lines.append(textwrap.fill(text, width=110, subsequent_indent="    ", break_on_hyphens=False))
    return "\n".join(["", "== Groups (group=option) ==", *lines, ""]) if lines else ""


def register_resolver() -> None:
    """Make ``${histo_groups:...}`` known to OmegaConf (before Hydra composes a command's help)."""
    if not OmegaConf.has_resolver("histo_groups"):
        OmegaConf.register_new_resolver("histo_groups", groups_section)
