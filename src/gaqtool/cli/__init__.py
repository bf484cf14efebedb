"""Command-line interface (Typer + Rich). ``main`` is the console script's entry point."""

from __future__ import annotations

import sys


def main() -> None:
    """Run the tool; Ctrl-C while it is still importing exits 130 with one line as well."""
    try:
        from gaqtool.cli.app import main as run
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        sys.exit(130)
    run()
