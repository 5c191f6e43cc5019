"""What the server accepts: request size, image size, pixel count, type, file names.

Every rejection is an :class:`UploadError` (an HTTP status in the 4xx range and a one-line message)
raised *before* the expensive step: the request body is cut off at ``max_body_bytes`` while it
streams in (:class:`BodyLimit`), an image's byte size is bounded before it is parsed, its pixel
count is read from the header before it is decoded, and only JPEG, PNG, WebP and BMP are decoded.
"""

from __future__ import annotations

import asyncio
import io
import json
import warnings
from dataclasses import dataclass
from typing import Any

from PIL import Image, UnidentifiedImageError

#: Leading bytes of the accepted formats -> PIL format name.
_MAGIC = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"BM", "BMP"))


@dataclass(frozen=True)
class Limits:
    """Bounds on what one request may carry."""

    max_body_bytes: int = 64 * 2**20  #: whole request (a POST /gallery may carry several images)
    max_image_bytes: int = 16 * 2**20  #: one image file
    max_pixels: int = 40_000_000  #: width x height, read from the header before decoding
    max_files: int = 64  #: images per POST /gallery
    max_k: int = 200  #: matches per page
    max_offset: int = 10_000  #: deepest page start
    max_depth: int = 5_000  #: crops searched to group results by tracklet (group=tracklet)
    formats: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP")
    body_timeout_s: float = 10.0  #: longest wait for the next piece of a request body (slow clients)


class UploadError(Exception):
    """A request the server refuses: ``status`` (4xx) and a one-line ``message``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def check_filename(name: str | None) -> str:
    """A client file name is metadata only; one that tries to be a path is refused."""
    name = name or ""
    if any(c in name for c in ("/", "\\", "\x00")) or name in (".", "..") or ".." in name:
        raise UploadError(400, f"file name {name[:80]!r} is not a plain file name (no folders, "
                               "no '..'); rename the file")
    if len(name) > 255:
        raise UploadError(400, "file name longer than 255 characters; rename the file")
    return name


def sniff(data: bytes) -> str | None:
    """The format the leading bytes announce (JPEG, PNG, WEBP, BMP) or None."""
    for magic, fmt in _MAGIC:
        if data.startswith(magic):
            return fmt
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def decode_image(data: bytes, limits: Limits, name: str = "upload") -> Image.Image:
    """Bytes of one upload -> an RGB PIL image, or an :class:`UploadError`."""
    label = name or "upload"
    if len(data) > limits.max_image_bytes:
        raise UploadError(413, f"{label}: {len(data)} bytes; the limit is {limits.max_image_bytes} "
                               "bytes per image")
    if not data:
        raise UploadError(400, f"{label}: empty file; send an image")
    fmt = sniff(data)
    if fmt is None or fmt not in limits.formats:
        raise UploadError(415, f"{label}: not an image this server reads "
                               f"({', '.join(limits.formats)}); send one of those")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data), formats=[fmt])  # parses the header only
            w, h = im.size
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise UploadError(413, f"{label}: {str(e).split('.')[0]}; the limit is "
                                   f"{limits.max_pixels} pixels") from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            raise UploadError(422, f"{label}: unreadable {fmt} header ({str(e)[:120]})") from None
        if w < 1 or h < 1 or w * h > limits.max_pixels:
            raise UploadError(413, f"{label}: declares {w}x{h} = {w * h} pixels; the limit is "
                                   f"{limits.max_pixels} pixels")
        try:
            im.load()  # decodes: truncated or corrupt data fails here
            return im.convert("RGB")
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise UploadError(422, f"{label}: truncated or corrupt {fmt} data "
                                   f"({str(e)[:120]})") from None


class BodyLimit:
    """ASGI middleware: a request body over its limit gets 413 before it is read further.

    ``max_bytes`` applies to every path except those in ``per_path`` (e.g. one-image routes).
    A declared ``Content-Length`` over the limit is refused before any byte is read; a chunked
    body is counted as it streams and cut off when it passes the limit.
    """

    def __init__(self, app: Any, max_bytes: int, per_path: dict[str, int] | None = None,
                 timeout_s: float | None = None):
        self.app, self.default = app, int(max_bytes)
        self.per_path = dict(per_path or {})
        self.timeout_s = timeout_s  # a body that stalls longer between pieces is dropped (408)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.per_path.get(scope.get("path", ""), self.default)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._reject(send, int(declared), limit)
            return
        seen = 0
        over = started = replaced = False

        slow = False

        async def limited_receive() -> dict:
            nonlocal seen, over, slow
            try:
                message = await asyncio.wait_for(receive(), self.timeout_s)
            except asyncio.TimeoutError:
                slow = True
                raise _TooSlow from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    over = True
                    raise _TooLarge
            return message

        async def guarded_send(message: dict) -> None:
            # frameworks turn a failed body read into their own 4xx: answer 413 instead
            nonlocal started, replaced
            if (over or slow) and not started and message["type"] == "http.response.start":
                if over:
                    await self._reject(send, seen, limit)
                else:
                    await self._too_slow(send)
                started = replaced = True
                return
            if replaced:
                return
            started |= message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _TooLarge:
            if not started:
                await self._reject(send, seen, limit)
        except _TooSlow:
            if not started:
                await self._too_slow(send)

    async def _too_slow(self, send: Any) -> None:
        await _answer(send, 408, f"request body stalled for more than {self.timeout_s:g} s; send it "
                                 "at once", close=True)

    @staticmethod
    async def _reject(send: Any, size: int, limit: int) -> None:
        body = json.dumps({"detail": f"request body of {size}+ bytes; the limit is {limit} bytes "
                                     "for this route"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


class _TooSlow(Exception):
    pass


#: Names a loopback server answers to when no other is allowed.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def _host_name(value: str) -> str:
    """``example.org:8000`` -> ``example.org``; ``[::1]:8000`` -> ``::1`` (lower case)."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class OriginGuard:
    """ASGI middleware: answer only requests addressed to this server, from its own page.

    * ``Host`` must be a name the server answers to (loopback names, the bound address, the hosts
      of allowed origins): a DNS-rebinding page reaches the port under its own name and gets 403.
    * ``Origin``, when a browser sends one, must be the page's own (``http://`` + the Host the
      request was sent to) or one of ``origins`` (``--allow-origin``); a web page that posts to the
      server from elsewhere gets 403 and changes nothing. Allowed named origins get CORS headers.
    Requests without an Origin (curl, scripts) pass the Origin check.
    """

    def __init__(self, app: Any, hosts: tuple[str, ...] | list[str] = (),
                 origins: tuple[str, ...] | list[str] = ()):
        from urllib.parse import urlsplit

        self.app = app
        self.origins = {o.strip().rstrip("/").lower() for o in origins if o.strip()}
        self.hosts = {*LOOPBACK_HOSTS, *(_host_name(h) for h in hosts if h)}
        self.hosts |= {urlsplit(o).hostname or "" for o in self.origins} - {""}

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers") or []}
        host = headers.get(b"host", b"").decode("latin-1")
        if not host or _host_name(host) not in self.hosts:
            await _forbid(send, f"Host {host[:80]!r} is not a name this server answers to; open it "
                                "as http://127.0.0.1:PORT or start it with --allow-origin")
            return
        origin = headers.get(b"origin")
        named = False
        if origin is not None:
            o = origin.decode("latin-1").strip().rstrip("/").lower()
            named = o in self.origins
            if not named and o not in (f"http://{host.lower()}", f"https://{host.lower()}"):
                await _forbid(send, f"cross-origin request from {o[:80]!r} refused; allow it with "
                                    "`hareid serve --allow-origin ORIGIN`")
                return
        if not named:
            await self.app(scope, receive, send)
            return
        cors = [(b"access-control-allow-origin", origin), (b"vary", b"Origin")]
        if scope["method"] == "OPTIONS":  # a preflight from an allowed origin
            await send({"type": "http.response.start", "status": 204, "headers": [
                *cors, (b"access-control-allow-methods", b"GET, POST, DELETE"),
                (b"access-control-allow-headers", headers.get(b"access-control-request-headers", b"*"))]})
            await send({"type": "http.response.body", "body": b""})
            return

        async def with_cors(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *cors]}
            await send(message)

        await self.app(scope, receive, with_cors)


async def _answer(send: Any, status: int, detail: str, close: bool = False) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status,
                "headers": headers + ([(b"connection", b"close")] if close else [])})
    await send({"type": "http.response.body", "body": body})


async def _forbid(send: Any, detail: str) -> None:
    await _answer(send, 403, detail)
