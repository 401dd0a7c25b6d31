"""Result output in every format: table (for people), json, jsonl and csv (for scripts).

Results go to stdout only; notices and progress go to stderr (see notices()).
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import click

from pixdex.errors import PixdexError

if TYPE_CHECKING:
    from pixdex.cli.app import App

FORMATS = ("table", "json", "jsonl", "csv")


def format_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--format`` and ``--json`` (shorthand for ``--format json``) to a command."""
    func = click.option("--json", "as_json", is_flag=True, help="Shorthand for --format json.")(func)
    func = click.option(
        "--format",
        "fmt",
        type=click.Choice(FORMATS),
        default="table",
        show_default=True,
        help="Output format: a table for people, json/jsonl/csv for scripts.",
    )(func)
    return func


def resolve_format(fmt: str, as_json: bool) -> str:
    return "json" if as_json else fmt


def dumps(obj: Any, **kw: Any) -> str:
    """JSON that is valid UTF-8: non-UTF-8 file names (surrogate-escaped by Python) come out
    as \\udcXX escapes, which json.loads turns back into the same path."""
    text = json.dumps(obj, ensure_ascii=False, **kw)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(obj, ensure_ascii=True, **kw)
    return text


def echo(text: str, nl: bool = True) -> None:
    """Write to stdout; a non-UTF-8 file name in a table or CSV is written as its original
    bytes (as ls does) instead of failing."""
    try:
        click.echo(text, nl=nl)
    except UnicodeEncodeError:
        stream = click.get_binary_stream("stdout")
        stream.write((text + ("\n" if nl else "")).encode("utf-8", "surrogateescape"))
        stream.flush()


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(v) for v in value)
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_cell(v)}" for k, v in value.items())
    return "" if value is None else str(value)


def render_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def emit(
    rows: Sequence[dict[str, Any]],
    fmt: str,
    *,
    columns: Sequence[str] | None = None,
    payload: Any = None,
    flatten: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> None:
    """Write ``rows`` to stdout. ``payload`` replaces the rows as the json document;
    ``flatten`` turns a row into flat columns for table and csv."""
    columns = list(columns or (rows[0].keys() if rows else []))
    if fmt == "json":
        echo(dumps(rows if payload is None else payload, indent=2))
    elif fmt == "jsonl":
        for row in rows:
            echo(dumps(row))
    else:
        flat = [flatten(r) for r in rows] if flatten else list(rows)
        if fmt == "csv":
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
            for row in flat:
                writer.writerow(
                    {c: _cell(row.get(c)) if not isinstance(row.get(c), (int, float)) else row.get(c) for c in columns}
                )
            echo(buf.getvalue(), nl=False)
        else:
            echo(render_table(flat, columns))


def note(message: str, *, quiet: bool = False) -> None:
    """A notice for people, on stderr (silenced by --quiet)."""
    if not quiet:
        click.echo(message, err=True)


def stderr_is_tty() -> bool:
    return sys.stderr.isatty()


def write_skips(app: App, skipped: list[dict[str, Any]], target: str | None, strict: bool) -> None:
    """Report skipped images on stderr (and to --skipped FILE); exit 1 under --strict-images."""
    if target:
        from pixdex.artifacts import atomic_write_bytes, jsonl_bytes

        atomic_write_bytes(Path(target), jsonl_bytes(skipped))
    if skipped:
        where = f" (details in {target})" if target else ""
        app.note(f"pixdex: skipped {len(skipped)} image(s){where}:")
        for entry in skipped[:20]:
            app.note(f"  {entry['path']}: {entry['reason']}" + (f" ({entry['detail']})" if entry.get("detail") else ""))
        if len(skipped) > 20:
            app.note(f"  ... and {len(skipped) - 20} more")
        if strict:
            raise PixdexError(f"{len(skipped)} image(s) skipped and --strict-images is set")


MATCH_COLUMNS = ["query", "rank", "score", "label", "path", "id"]


def emit_matches(rows: list[dict[str, Any]], fmt: str, as_json: bool) -> None:
    """Search-shaped rows: JSON as `pixdex search --format json`, else one line per match."""
    fmt = resolve_format(fmt, as_json)
    if fmt == "json":
        emit(rows, fmt)
    else:
        emit([{"query": r["query"], **m} for r in rows for m in r["matches"]], fmt, columns=MATCH_COLUMNS)
