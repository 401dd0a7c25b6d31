"""The `pixdex` launcher: one click group, one module per command group.

Commands parse arguments, call the core's modules (the same functions :mod:`pixdex.api`
and scripts use), and print. Nothing here imports torch
at module level, so `pixdex --help` and `pixdex plugins` stay fast.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from pixdex import __version__
from pixdex.cli.app import App, PixdexGroup, report_error
from pixdex.errors import PixdexError
from pixdex.plugins import PluginSet, load_plugins

HELP = """pixdex: recognise and retrieve images with PyTorch.

Train a classifier, evaluate it and predict labels; embed a collection, build a
nearest-neighbour index and search it. Every backbone, transform, loss, index and
dataset reader is a plugin: `pixdex plugins` shows what is installed.

Results go to stdout (--format table|json|jsonl|csv); notices and progress go to
stderr. Exit codes: 0 success, 1 error, 2 usage error.
"""


def build_cli(plugins: PluginSet | None = None) -> click.Group:
    """A fresh `pixdex` group with the built-in commands and every plugin's commands."""
    plugins = plugins if plugins is not None else load_plugins()

    @click.group(cls=PixdexGroup, help=HELP, context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option(__version__, "--version", prog_name="pixdex")
    @click.option("-q", "--quiet", is_flag=True, help="No notices or progress bars on stderr.")
    @click.pass_context
    def cli(ctx: click.Context, quiet: bool) -> None:
        from pixdex.data.images import quiet_pillow_warnings

        quiet_pillow_warnings()  # bad images are reported in the skip report instead
        ctx.obj = App(plugins=plugins, quiet=quiet)

    from pixdex.cli import analysis, config_cmd, export_cmd, info, recognition, retrieval, serve

    for module in (info, config_cmd, recognition, retrieval, analysis, serve, export_cmd):
        module.register(cli)
    plugins.add_commands(cli)
    return cli


def main(argv: list[str] | None = None) -> Any:
    """Console-script entry point."""
    try:
        cli = build_cli()
    except PixdexError as exc:
        report_error(exc)
        sys.exit(exc.exit_code)
    return cli.main(args=argv, prog_name="pixdex")
