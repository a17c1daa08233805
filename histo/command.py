"""How a histo command ends when the user asked for something it cannot do.

A :class:`UserError` (a bad setting, a missing file, runs that cannot be combined) is printed as one
line on stderr, ``<command>: <message>``, where the message names the key or path and what to do,
and the command exits with status 2. Hydra's own errors about the command line (an unknown config
option, an override that does not parse) keep Hydra's message and exit with status 2 as well.
``HYDRA_FULL_ERROR=1`` shows the full traceback instead, as in any Hydra program. A command that
fails leaves no directory behind that holds nothing but Hydra's bookkeeping (``.hydra/``, its log).
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException

from histo import CONF_DIR
from histo.command_help import register_resolver

USAGE_STATUS = 2  # the exit status of a command the user called wrongly (as argparse uses)


class UserError(ValueError):
    """Something the user asked for that cannot be done; the message names the key or path and what to do."""


def full_error() -> bool:
    """``HYDRA_FULL_ERROR=1``: show tracebacks rather than one line."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


@contextmanager
def reporting(prog: str):
    """Turn a :class:`UserError` raised inside into one line on stderr and exit status 2."""
    try:
        yield
    except UserError as error:
        if full_error():
            raise
        print(f"{prog}: {error}", file=sys.stderr, flush=True)
        raise SystemExit(USAGE_STATUS) from None


def hydra_command(config_name: str, prog: str):
    """Make a Hydra task function (``task(cfg)``) the ``main()`` of command ``prog``, reporting user
    errors as :func:`reporting` does. ``main(cfg)`` calls the task directly (as ``hydra.main`` allows)."""

    register_resolver()

    def decorate(task):
        @functools.wraps(task)
        def job(cfg):
            try:
                with reporting(prog):
                    return task(cfg)
            except BaseException:
                remove_if_bookkeeping_only()
                raise

        hydra_main = hydra.main(version_base="1.3", config_path=CONF_DIR, config_name=config_name)(job)

        @functools.wraps(task)
        def main(cfg=None):
            if cfg is not None:
                return job(cfg)
            try:
                return hydra_main()
            except SystemExit as exit_:
                # Hydra prints its command-line errors itself, then exits with 1 while handling them
                if exit_.code == 1 and isinstance(exit_.__context__, CompactHydraException):
                    raise SystemExit(USAGE_STATUS) from None
                raise

        return main

    return decorate


def remove_if_bookkeeping_only() -> None:
    """Remove this Hydra job's output directory if it holds nothing but what Hydra wrote into it
    (``.hydra/`` and ``<job>.log``): a command that failed before writing anything leaves nothing."""
    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    directory = Path(hydra_cfg.runtime.output_dir)
    if not directory.is_dir() or directory.resolve() == Path.cwd().resolve():
        return
    bookkeeping = {hydra_cfg.output_subdir or ".hydra", f"{hydra_cfg.job.name}.log"}
    if {p.name for p in directory.iterdir()} <= bookkeeping:
        shutil.rmtree(directory, ignore_errors=True)
