"""The launcher's context object and the click group that turns errors into one line."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

import click

from pixdex.errors import PixdexError
from pixdex.plugins import PluginSet

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class App:
    """What every command can reach: the loaded plugins and the global flags."""

    plugins: PluginSet
    quiet: bool = False
    notes: list[str] = field(default_factory=list)

    def note(self, message: str) -> None:
        if not self.quiet:
            click.echo(message, err=True)


pass_app = click.make_pass_decorator(App)


def report_error(exc: PixdexError) -> None:
    # one line, first line only: a user error never shows a traceback
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    click.echo(f"pixdex: error: {message}", err=True)


class PixdexGroup(click.Group):
    """A click group whose commands report PixdexError as one stderr line and exit 1 or 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PixdexError as exc:
            report_error(exc)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("pixdex: interrupted; nothing half-written was kept", err=True)
            ctx.exit(130)


def stdout_is_tty() -> bool:
    return sys.stdout.isatty()
