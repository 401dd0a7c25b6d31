"""The Starlette application of `pixdex serve`: routes, limits, auth, headers, access log.

Every error is a JSON object ``{"error": "one line"}`` with the status code that says
what kind of error it is (400 bad request, 401 no or wrong token, 404 unknown id or a route
this folder cannot answer, 413 too large, 415 not an image, 503 busy). The work of a
request runs in a bounded thread pool (:data:`anyio.CapacityLimiter`); beyond
``max_pending`` requests waiting or running, new ones get 503 at once rather than queueing
without bound.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import threading
import time
from importlib import resources
from typing import Any, AsyncIterator, Callable

import anyio
from starlette.applications import Starlette
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from pixdex.errors import PixdexError
from pixdex.serve.service import ServeError, Service, Upload

TOKEN_COOKIE = "pixdex_token"
STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript"),
    "/static/style.css": ("style.css", "text/css"),
}
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    # the page's own script and style only: no inline code, nothing from elsewhere
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


class Limits:
    """What one server accepts: upload size, files per request, concurrency."""

    def __init__(
        self, *, max_upload_bytes: int = 20 << 20, max_files: int = 32, threads: int = 4, max_pending: int = 64
    ) -> None:
        self.max_upload_bytes = max_upload_bytes
        self.max_files = max_files
        self.threads = threads
        self.max_pending = max_pending


class Gate:
    """Requests waiting for or holding a worker thread (touched only on the event loop)."""

    def __init__(self) -> None:
        self.pending = 0


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message.strip().splitlines()[0] if message.strip() else "error"}, status)


def create_app(
    service: Service,
    *,
    limits: Limits | None = None,
    token: str | None = None,
    reload_interval: float = 1.0,
    log: Callable[[str], None] = lambda m: None,
) -> Starlette:
    """The ASGI app over ``service``. ``token``: when set, every route but ``/healthz``
    needs ``Authorization: Bearer TOKEN`` (or the cookie that ``/?token=TOKEN`` sets for a
    browser). ``reload_interval`` seconds between checks for a new committed version (0: no
    watcher; tests call :meth:`Service.reload_if_changed` themselves)."""
    limits = limits or Limits()
    limiter = anyio.CapacityLimiter(limits.threads)
    gate = Gate()

    async def in_pool(func: Callable[..., Any], *args: Any) -> Any:
        if gate.pending >= limits.max_pending:
            raise ServeError(503, f"the server is busy ({gate.pending} requests in progress); retry shortly")
        gate.pending += 1
        try:
            return await anyio.to_thread.run_sync(lambda: func(*args), limiter=limiter)
        except PixdexError:
            raise
        except Exception as exc:  # a bug, not the client's fault: one log line and a 500, the server lives on
            log(f"pixdex: serve: internal error in {getattr(func, '__name__', func)}: {type(exc).__name__}: {exc}")
            raise ServeError(500, f"internal error: {type(exc).__name__}") from None
        finally:
            gate.pending -= 1

    async def read_uploads(request: Request) -> tuple[list[Upload], dict[str, str]]:
        ctype = request.headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            raise ServeError(415, "send multipart/form-data with the image files in the field 'image'")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limits.max_upload_bytes:
            raise ServeError(413, f"the upload is {declared} bytes; the limit is {limits.max_upload_bytes}")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limits.max_upload_bytes:
                raise ServeError(413, f"the upload is over the limit of {limits.max_upload_bytes} bytes")

        async def replay() -> AsyncIterator[bytes]:
            yield bytes(body)

        parser = MultiPartParser(Headers(raw=request.headers.raw), replay(), max_files=limits.max_files, max_fields=16)
        try:
            form = await parser.parse()
        except MultiPartException as exc:
            raise ServeError(400, f"malformed multipart body: {exc.message}") from None
        uploads, fields = [], {}
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name == "image":
                    data = await value.read()
                    uploads.append(Upload(value.filename or f"upload-{len(uploads) + 1}", data))
            else:
                fields[name] = value
        await form.close()
        return uploads, fields

    async def search(request: Request) -> Response:
        uploads, fields = await read_uploads(request)
        return JSONResponse(await in_pool(service.search, uploads, fields.get("k")))

    async def predict(request: Request) -> Response:
        uploads, fields = await read_uploads(request)
        return JSONResponse(await in_pool(service.predict, uploads, fields.get("k")))

    async def similar(request: Request) -> Response:
        return JSONResponse(await in_pool(service.similar, item_id(request), request.query_params.get("k")))

    async def recommend(request: Request) -> Response:
        try:
            body = json.loads(await request.body() or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ServeError(400, 'the body must be JSON: {"positive": [ids], "negative": [ids], "k": N}') from None
        if not isinstance(body, dict) or "positive" not in body:
            raise ServeError(400, 'the body must be a JSON object with "positive" (a list of item ids)')
        unknown = sorted(set(body) - {"positive", "negative", "k"})
        if unknown:
            raise ServeError(400, f"unknown field(s) {', '.join(unknown)}: use positive, negative, k")
        return JSONResponse(await in_pool(service.recommend, body["positive"], body.get("negative"), body.get("k")))

    async def info(request: Request) -> Response:
        return JSONResponse(service.info())

    async def healthz(request: Request) -> Response:
        snap = service.snapshot
        return JSONResponse({"status": "ok", "kind": snap.kind, "version": snap.version})

    async def thumb(request: Request) -> Response:
        data, media, placeholder = await in_pool(service.thumbnail, item_id(request))
        headers = {"X-Pixdex-Placeholder": "1"} if placeholder else {}
        return Response(data, media_type=media, headers=headers)

    async def static(request: Request) -> Response:
        if request.url.path == "/" and token and request.query_params.get("token"):
            if not hmac.compare_digest(request.query_params["token"].encode(), token.encode()):
                raise ServeError(401, "wrong token")
            response = RedirectResponse("/", status_code=303)  # the token leaves the address bar
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
            return response
        name, media = STATIC_FILES[request.url.path]
        return Response(resources.files("pixdex.serve").joinpath("static", name).read_bytes(), media_type=media)

    routes = [
        Route("/api/search", search, methods=["POST"]),
        Route("/api/predict", predict, methods=["POST"]),
        Route("/api/items/{id}/similar", similar, methods=["GET"]),
        Route("/api/recommend", recommend, methods=["POST"]),
        Route("/api/info", info, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/thumbs/{id}", thumb, methods=["GET"]),
        *[Route(path, static, methods=["GET"]) for path in STATIC_FILES],
        Route("/favicon.ico", lambda request: Response(status_code=204), methods=["GET"]),  # browsers ask
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        stop = threading.Event()
        watcher = None
        if reload_interval > 0:
            watcher = threading.Thread(
                target=service.watch, args=(reload_interval, stop), name="pixdex-reload", daemon=True
            )
            watcher.start()
        try:
            yield
        finally:
            stop.set()
            if watcher is not None:
                watcher.join(timeout=5)

    async def on_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, ServeError):
            return error(exc.status, str(exc))
        if isinstance(exc, HTTPException):  # unknown route, wrong method
            return error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")
        return error(400, str(exc))  # any other PixdexError: a user-facing error from the core

    handlers = {ServeError: on_error, PixdexError: on_error, HTTPException: on_error}
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers)
    return GuardedApp(app, token=token, log=log, gate=gate)


def item_id(request: Request) -> int:
    raw = request.path_params["id"]
    if not raw.isdigit() or len(raw) > 18:
        raise ServeError(404, f"no item with id {raw!r}: ids are non-negative integers")
    return int(raw)


class GuardedApp:
    """ASGI wrapper: the token check, error mapping, security headers and one access-log
    line per request (``pixdex: serve: CLIENT "METHOD PATH" STATUS MS``)."""

    def __init__(self, app: Starlette, *, token: str | None, log: Callable[[str], None], gate: Gate) -> None:
        self.app = app
        self.gate = gate
        self.token = token.encode() if token else None
        self.log = log

    def __getattr__(self, name: str) -> Any:  # TestClient and uvicorn reach .state, .router...
        return getattr(self.app, name)

    def authorised(self, scope: dict[str, Any]) -> bool:
        if self.token is None or scope["path"] == "/healthz":
            return True
        if scope["path"] == "/" and b"token=" in scope.get("query_string", b""):
            return True  # the page's own check sets the cookie or answers 401
        headers = Headers(scope=scope)
        auth = headers.get("authorization", "")
        if auth.startswith("Bearer ") and hmac.compare_digest(auth[7:].encode(), self.token):
            return True
        for part in headers.get("cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == TOKEN_COOKIE and hmac.compare_digest(value.encode(), self.token):
                return True
        return False

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                names = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    (k.lower().encode(), v.encode())
                    for k, v in SECURITY_HEADERS.items()
                    if k.lower().encode() not in names
                ]
            await send(message)

        try:
            if self.authorised(scope):
                await self.app(scope, receive, send_with_headers)
            else:
                denied = error(401, "this server needs a token: send Authorization: Bearer TOKEN")
                await denied(scope, receive, send_with_headers)
        finally:
            client = scope.get("client") or ("-", 0)
            ms = (time.perf_counter() - start) * 1000
            self.log(f'pixdex: serve: {client[0]} "{scope["method"]} {scope["path"]}" {status["code"]} {ms:.1f}ms')
