"""Typer application: command registration and the single error boundary ``main()``."""

from __future__ import annotations

import json
import os
import sys

import typer
from rich.markup import escape
from typer._click.exceptions import ClickException  # Typer's own copy of click

from gaqtool import __version__
from gaqtool.cli.console import log
from gaqtool.errors import GaqtoolError, Interrupted

app = typer.Typer(
    name="gaqtool",
    help="Geometric-Aware Quantization of SO(3)-equivariant interatomic potentials.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # plain help: wraps at any width (COLUMNS=80) without cutting option names
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"gaqtool {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Show the version and exit.")) -> None:
    """Geometric-Aware Quantization of SO(3)-equivariant interatomic potentials."""


def _register() -> None:
    from gaqtool.cli import train  # noqa: F401  (commands register themselves on `app`)

    for name in ("quantize", "evaluate", "lee", "inspect", "md", "bench"):
        try:
            __import__(f"gaqtool.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"gaqtool.cli.{name}":
                raise


def _print_error(exc: GaqtoolError, json_document: bool = True) -> None:
    if json_document and "--json" in sys.argv:
        sys.stdout.write(json.dumps({"error": {"code": type(exc).__name__, "message": exc.message,
                                               "hint": exc.hint}}) + "\n")
    # escaped: messages hold paths, patterns and hints like pip install "gaqtool[sevenn]",
    # whose brackets rich would take for markup
    log.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False, soft_wrap=True)
    if exc.hint:
        log.print(f"[bold]hint:[/] {escape(exc.hint)}", highlight=False, soft_wrap=True)


def main() -> None:
    """Entry point: run the app; user errors print ``error:``/``hint:`` and exit 1.

    Click handles usage errors itself (exit 2). Ctrl-C anywhere exits 130 with one line (a
    command that keeps partial results raises ``Interrupted`` after saving them). Any other
    exception is a bug and keeps its traceback. ``GAQTOOL_DEBUG=1`` shows tracebacks for user
    errors too.
    """
    try:
        _register()
        code = app(standalone_mode=False)
    except GaqtoolError as exc:
        if os.environ.get("GAQTOOL_DEBUG"):
            raise
        _print_error(exc)
        sys.exit(exc.exit_code)
    except ClickException as exc:  # usage errors: click's plain message, exit 2
        exc.show()
        sys.exit(exc.exit_code)
    except typer.Abort:
        _print_error(GaqtoolError("aborted"))
        sys.exit(1)
    except KeyboardInterrupt:
        code = 130
    if code == 130:  # Typer turns Ctrl-C inside a command into exit code 130, silently
        _print_error(Interrupted("interrupted (Ctrl-C)"), json_document=False)
    sys.exit(code if isinstance(code, int) else 0)
