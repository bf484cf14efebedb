"""The two output streams and their helpers.

Results (tables, reports, JSON) go to stdout through ``console``, so that ``gaqtool inspect f >
info.txt`` captures them; progress bars, notes on what was read, warnings, "wrote ..." lines and
errors go to stderr through ``log``.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Column
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

__all__ = ["console", "log", "warn", "clamped_count", "progress", "print_json", "progress_enabled", "training_callback"]

console = Console()  # results: stdout
log = Console(stderr=True)  # progress, notes, warnings, errors: stderr


def warn(message: str) -> None:
    """One ``warning:`` line on stderr."""
    log.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


def clamped_count(option: str, asked: int, available: int, what: str, default: int | None = None) -> int:
    """``min(asked, available)``, with a warning when that is fewer than the user asked for
    (a default larger than the data, e.g. 32 calibration frames of a 24-structure set, is
    used silently: the data notes give the counts)."""
    if asked > available and asked != default:
        warn(f"{option} {asked}: {what} has {available}; using {available}")
    return min(asked, available)


def progress_enabled(json_mode: bool = False) -> bool:
    """Bars only on a terminal, never in --json mode or CI."""
    return log.is_terminal and not json_mode and not os.environ.get("CI")


def progress(json_mode: bool = False, transient: bool = True) -> Progress:
    """A determinate progress bar on stderr (disabled when not a TTY, in --json mode or CI)."""
    def cut(width: int) -> Column:  # shortened with '…' rather than pushing the counts off the line
        return Column(max_width=width, no_wrap=True, overflow="ellipsis")

    return Progress(
        TextColumn("[bold]{task.description}", table_column=cut(24)), BarColumn(bar_width=16),
        MofNCompleteColumn(table_column=Column(no_wrap=True)),
        TextColumn("{task.fields[info]}", table_column=cut(18)), TimeElapsedColumn(), TimeRemainingColumn(),
        console=log, transient=transient, disable=not progress_enabled(json_mode))


def print_json(data: Any) -> None:
    """Write one JSON document ``{"data": ...}`` to stdout."""
    sys.stdout.write(json.dumps({"data": data}, indent=2, default=float) + "\n")
    sys.stdout.flush()


def training_callback(bar: Progress, task, prefix: str):
    """``on_step`` for ``train_model``: advance ``bar`` per step, show validation MAE; when bars
    are off (not a TTY, CI), print one line per epoch instead (main process only)."""
    from gaqtool import distributed

    last = {"val": ""}

    def on_step(info: dict) -> None:
        if info["kind"] == "step":
            bar.update(task, advance=1, info=f"loss {info['loss']:.2e} {last['val']}")
            return
        last["val"] = f"| val E {info['val_energy_mae_mev']:.1f} meV F {info['val_force_mae_mev_a']:.1f} meV/A"
        if not bar.live.is_started and distributed.is_main():
            log.print(f"{prefix} {info['epoch']}: loss {info['train_loss']:.3e} {last['val']} "
                          f"({info['seconds']:.0f} s)", highlight=False)

    return on_step
