"""Command-line interface (Typer + Rich). ``main`` is the console script's entry point."""

from __future__ import annotations

import os
import sys

INTERRUPTED = 130


def _exit_interrupted() -> None:
    """Exit 130 at once: a Ctrl-C that lands in a half-imported extension (torch) can otherwise
    turn the interpreter's shutdown into a death by SIGINT after the message was printed."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(INTERRUPTED)


def main() -> None:
    """Run the tool; Ctrl-C while it is still importing exits 130 with one line as well."""
    try:
        from gaqtool.cli.app import main as run
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted (Ctrl-C)\n")
        _exit_interrupted()
    try:
        run()
    except SystemExit as exc:
        if exc.code == INTERRUPTED:
            _exit_interrupted()
        raise
    except KeyboardInterrupt:  # between the error boundary and the exit
        _exit_interrupted()
