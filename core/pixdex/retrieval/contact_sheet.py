"""Self-contained HTML pages of thumbnails (search results, clusters, duplicates).

Thumbnails are embedded as base64 PNGs, so the page is one file; every path and label is
HTML-escaped, so a file named `<img src=x onerror=alert(1)>.png` is shown, not run.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any, Callable, Sequence

from pixdex.data.images import DEFAULT_MAX_PIXELS, ImageSkip, open_image

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}
h1{font-size:1.3em} h2{font-size:1em;margin:1.4em 0 .4em}
.row{display:flex;flex-wrap:wrap;gap:.6em;align-items:flex-start}
figure{margin:0;width:140px;background:#fff;border:1px solid #ddd;border-radius:4px;padding:4px}
figure.query{border:2px solid #2a6}
figure img{width:128px;height:128px;object-fit:contain;image-rendering:pixelated;background:#eee;
  display:block;margin:auto}
figcaption{font-size:11px;word-break:break-all;margin-top:3px}
.score{color:#555} .label{font-weight:600} .missing{color:#a33}
"""


def thumbnail(
    path: str, opener: Callable[[str], Any] | None = None, size: int = 128, max_pixels: int = DEFAULT_MAX_PIXELS
) -> str | None:
    """A data: URI of a PNG thumbnail, or None when the image cannot be read."""
    try:
        image = opener(path) if opener is not None else open_image(path, max_pixels=max_pixels)
    except (ImageSkip, OSError, KeyError, ValueError):
        return None
    image.thumbnail((size, size))
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def figure(
    path: str, caption_lines: Sequence[str], *, css: str = "", opener: Callable[[str], Any] | None = None
) -> str:
    uri = thumbnail(path, opener)
    img = f'<img src="{uri}" alt="">' if uri else '<div class="missing">(unreadable)</div>'
    caption = "<br>".join(caption_lines)
    return f'<figure class="{css}">{img}<figcaption>{caption}</figcaption></figure>'


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def page(title: str, body: str) -> str:
    return (
        f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f"<style>{STYLE}</style></head><body><h1>{esc(title)}</h1>\n{body}\n</body></html>\n"
    )


def search_sheet(rows: list[dict[str, Any]], title: str, opener: Callable[[str], Any] | None = None) -> str:
    """One row per query: the query image, then its matches with label and score."""
    parts = []
    for row in rows:
        figures = [figure(row["query"], ['<span class="label">query</span>', esc(row["query"])], css="query")]
        for m in row["matches"]:
            lines = [f'#{m["rank"]} <span class="score">{m["score"]:.4f}</span>']
            if m.get("label") is not None:
                lines.append(f'<span class="label">{esc(m["label"])}</span>')
            lines.append(esc(m["path"]))
            figures.append(figure(m["path"], lines, opener=opener))
        parts.append(f'<h2>{esc(row["query"])}</h2><div class="row">{"".join(figures)}</div>')
    return page(title, "\n".join(parts))


def _summary(pairs: Sequence[tuple[str, Any]]) -> str:
    cells = " &middot; ".join(
        f"{esc(k)}: <b>{esc(f'{v:.4f}' if isinstance(v, float) else v)}</b>" for k, v in pairs if v is not None
    )
    return f"<p>{cells}</p>"


def cluster_sheet(
    clusters: list[dict[str, Any]],
    title: str,
    report: dict[str, Any] | None = None,
    opener: Callable[[str], Any] | None = None,
) -> str:
    """One row per cluster: its size, majority label, and its members nearest the centre.

    Each cluster is ``{cluster, size, majority_label, majority_fraction, items: [{path,
    label, distance}]}``.
    """
    report = report or {}
    parts = [
        _summary(
            [
                ("items", report.get("items")),
                ("clusters", report.get("k")),
                ("NMI", report.get("nmi")),
                ("purity", report.get("purity")),
            ]
        )
    ]
    for c in clusters:
        head = f"cluster {esc(c['cluster'])}: {esc(c['size'])} item(s)"
        if c.get("majority_label") is not None:
            head += f' &middot; majority <span class="label">{esc(c["majority_label"])}</span>'
            if c.get("majority_fraction") is not None:
                head += f" ({100 * c['majority_fraction']:.0f}%)"
        figures = []
        for it in c["items"]:
            lines = [f'<span class="score">distance {it["distance"]:.4f}</span>']
            if it.get("label") is not None:
                lines.append(f'<span class="label">{esc(it["label"])}</span>')
            lines.append(esc(it["path"]))
            figures.append(figure(it["path"], lines, opener=opener))
        shown = "" if len(c["items"]) >= c["size"] else f" (the {len(c['items'])} nearest the centre shown)"
        parts.append(f'<h2>{head}{shown}</h2><div class="row">{"".join(figures)}</div>')
    return page(title, "\n".join(parts))


def duplicates_sheet(
    groups: list[dict[str, Any]],
    title: str,
    report: dict[str, Any] | None = None,
    opener: Callable[[str], Any] | None = None,
    max_groups: int = 500,
    per_group: int = 24,
) -> str:
    """One row per group of near-duplicates (``{group, size, max_score, min_score, items:
    [{id, path, label}]}``); at most ``max_groups`` groups of ``per_group`` thumbnails."""
    report = report or {}
    parts = [
        _summary(
            [
                ("items", report.get("items")),
                ("groups", len(groups)),
                ("pairs", report.get("pairs")),
                ("threshold", report.get("threshold")),
            ]
        )
    ]
    if not groups:
        parts.append("<p>No near-duplicates at this threshold.</p>")
    for g in groups[:max_groups]:
        head = (
            f"group {esc(g['group'])}: {esc(g['size'])} images &middot; "
            f'<span class="score">scores {g["min_score"]:.4f} to {g["max_score"]:.4f}</span>'
        )
        figures = []
        for it in g["items"][:per_group]:
            lines = [f"id {esc(it['id'])}"]
            if it.get("label") is not None:
                lines.append(f'<span class="label">{esc(it["label"])}</span>')
            lines.append(esc(it["path"]))
            figures.append(figure(it["path"], lines, opener=opener))
        parts.append(f'<h2>{head}</h2><div class="row">{"".join(figures)}</div>')
    if len(groups) > max_groups:
        parts.append(f"<p>... and {len(groups) - max_groups} more group(s): see the JSON output.</p>")
    return page(title, "\n".join(parts))
