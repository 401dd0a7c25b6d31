"""`pixdex serve` (a warm HTTP server) and `pixdex recommend` (recommendations from liked items)."""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
from pathlib import Path
from typing import Any

import click

from pixdex.cli.app import App, pass_app
from pixdex.cli.options import inference_options, runtime_for
from pixdex.cli.output import emit_matches, format_options
from pixdex.errors import UsageError


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: the OS picks a free one), so the URL printed is real."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY only on sockets whose proto
    # says TCP, and without it a keep-alive client waits ~40 ms (Nagle against delayed ACK)
    # for every response sent as headers then body
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; pick another --port (0: any free one)"
        ) from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


@click.command("serve")
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback by default).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0 picks a free port.")
@click.option(
    "--token",
    envvar="PIXDEX_TOKEN",
    default=None,
    help="Require `Authorization: Bearer TOKEN` on every route but /healthz [env PIXDEX_TOKEN]; "
    "a browser opens /?token=TOKEN once. Needed for a non-loopback --host.",
)
@click.option(
    "--insecure-no-token", is_flag=True, help="Allow a non-loopback --host without a token (anyone can query it)."
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where thumbnails are cached [default: $XDG_CACHE_HOME/pixdex/thumbs]; never inside the index.",
)
@click.option(
    "--max-k", type=click.IntRange(min=1), default=100, show_default=True, help="Largest k a request may ask."
)
@click.option(
    "--threads", type=click.IntRange(min=1), default=4, show_default=True, help="Threads that run requests' work."
)
@click.option(
    "--torch-threads",
    type=click.IntRange(min=1),
    default=None,
    help="Threads of one forward pass [default: the CPUs, at most 4].",
)
@click.option(
    "--queue",
    "max_pending",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Requests in progress beyond which new ones get 503.",
)
@click.option(
    "--max-upload-mb", type=click.FloatRange(min=0.001), default=20.0, show_default=True, help="Largest request body."
)
@click.option(
    "--reload-interval",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Seconds between checks for a newly committed index version (0: never reload).",
)
@inference_options
@pass_app
def serve_cmd(
    app: App,
    folder: str,
    host: str,
    port: int,
    token: str | None,
    insecure_no_token: bool,
    cache_dir: str | None,
    max_k: int,
    threads: int,
    torch_threads: int | None,
    max_pending: int,
    max_upload_mb: float,
    reload_interval: float,
    sets: tuple[str, ...],
    **params: Any,
) -> None:
    """Serve FOLDER (an index folder, or a run folder) over HTTP, with a web page at /.

    The model and the index are loaded once. JSON API: POST /api/search (multipart,
    files in the field 'image', and k), GET /api/items/ID/similar?k=N ("more like this"),
    POST /api/recommend ({"positive": [ids], "negative": [ids], "k": N}), POST
    /api/predict, GET /api/info, GET /healthz, GET /thumbs/ID. A run folder answers
    predict and info; the index routes answer 404. When the index folder commits a new
    version (index add, remove, a rebuild) the server swaps it in without a restart.
    Ctrl-C or SIGTERM stops it gracefully. See docs/serve.md.
    """
    from pixdex.optional import import_optional

    import_optional("starlette", "pixdex serve")
    uvicorn = import_optional("uvicorn", "pixdex serve")
    import_optional("python_multipart", "pixdex serve (uploads)")
    if not is_loopback(host) and not token and not insecure_no_token:
        raise UsageError(
            f"--host {host} is reachable from other machines: pass --token TOKEN (or PIXDEX_TOKEN), "
            "or --insecure-no-token to serve without one"
        )
    if token is not None and len(token) < 8:
        raise UsageError("--token must be at least 8 characters")
    runtime = runtime_for(app, params, sets, "serve")

    import torch

    torch.set_num_threads(torch_threads or max(1, min(4, os.cpu_count() or 1)))
    from pixdex.serve.app import Limits, create_app
    from pixdex.serve.service import Service

    def log(message: str) -> None:
        click.echo(message, err=True)

    service = Service(folder, app.plugins, runtime, max_k=max_k, cache_dir=cache_dir, log=log)
    limits = Limits(max_upload_bytes=int(max_upload_mb * (1 << 20)), threads=threads, max_pending=max_pending)
    asgi = create_app(service, limits=limits, token=token, reload_interval=reload_interval, log=log)
    sock = bind(host, port)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    info = service.info()
    what = f"{info['count']} items" if info["kind"] == "index" else "run folder, predict only"
    # stdout, one line, so a script can read the URL (port 0 picks one)
    click.echo(f"http://{shown}:{bound}/")
    app.note(f"pixdex: serving {Path(folder)} ({what}) at http://{shown}:{bound}/; Ctrl-C stops")
    config = uvicorn.Config(asgi, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=10)
    # uvicorn stops gracefully on SIGINT/SIGTERM, then re-raises the signal through the
    # handlers it found: make those no-ops, so that a requested stop exits 0, not -15 or 130
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    app.note("pixdex: serve: stopped")


@click.command("recommend")
@click.argument("index_dir", type=click.Path(file_okay=False))
@click.option("--like", "positive", type=int, multiple=True, required=True, help="An item id you like (repeatable).")
@click.option("--unlike", "negative", type=int, multiple=True, help="An item id you do not like (repeatable).")
@click.option(
    "-k", "k", type=click.IntRange(min=1), default=None, help="Items to recommend [default: retrieval.k, 10]."
)
@format_options
@pass_app
def recommend_cmd(
    app: App,
    index_dir: str,
    positive: tuple[int, ...],
    negative: tuple[int, ...],
    k: int | None,
    fmt: str,
    as_json: bool,
) -> None:
    """Recommend items of INDEX_DIR like the --like ids and unlike the --unlike ids.

    The query is mean(liked) + 0.5 * (mean(liked) - mean(unliked)) of the stored
    embeddings (unit-normalised first for a cosine index); the given items are never
    recommended. Ids are those `pixdex search` prints. Output as `pixdex search`.
    """
    from pixdex import api
    from pixdex.retrieval.by_item import recommend
    from pixdex.retrieval.index_folder import open_index

    runtime = api.runtime_config(app.plugins, what="recommend")
    index = open_index(index_dir, app.plugins)
    emit_matches([recommend(index, list(positive), list(negative), k or runtime["k"])], fmt, as_json)


def register(cli: click.Group) -> None:
    cli.add_command(serve_cmd)
    cli.add_command(recommend_cmd)
