"""Issue 21, the server cases: concurrent adds of one image (2), the folders files are served from
(3), Origin / Host checks (4), Ctrl-C (11) and unchecked server options and error details (13,
lesser). Each test does what the probe did.
"""

from __future__ import annotations

import asyncio
import io
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers.reliability import cli, env, error_line
from tests.helpers.serve import embedder_for, make_app
from tests.helpers.tiny import Tiny

pytest.importorskip("fastapi")
pytest.importorskip("faiss")
import httpx
from fastapi.testclient import TestClient

from hareid.index import open_index
from hareid.serve import create_app, open_gallery

LOCAL = "http://127.0.0.1"


def jpeg(seed: int) -> bytes:
    """A new image no gallery holds (random pixels, 64x32)."""
    arr = np.random.default_rng(seed).integers(0, 255, (64, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


# ------------------------------------------------------------ 2. eight clients, one new image
def test_case02_concurrent_adds_of_one_image_keep_the_winners_file(tiny: Tiny, tmp_path: Path) -> None:
    app = make_app(tiny, tmp_path)

    async def trial(data: bytes) -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=LOCAL, timeout=60) as c:
            return await asyncio.gather(*[c.post("/gallery", files={"images": ("x.jpg", data, "image/jpeg")})
                                          for _ in range(8)])

    async def fetch(url: str) -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=LOCAL) as c:
            return await c.get(url)

    for seed in range(6):
        data = jpeg(seed)
        rs = asyncio.run(trial(data))
        codes = sorted(r.status_code for r in rs)
        assert codes == [200] + [409] * 7, [r.text for r in rs]
        (winner,) = [r.json()["ids"][0] for r in rs if r.status_code == 200]
        got = asyncio.run(fetch(f"/gallery/{winner}/image"))
        assert got.status_code == 200 and got.content == data, f"trial {seed}: the winner's image is gone"
    assert not [p for p in (tmp_path / "uploads").iterdir() if p.suffix == ".part" or p.name.endswith(".tmp")]


# ------------------------------------------------------- 3. files served: the command line decides
def _crafted_gallery(tiny: Tiny, folder: Path, secret: Path) -> int:
    """A gallery folder whose own .hareid-index says root=/ and holds an item pointing at ``secret``."""
    shutil.copytree(tiny.data / "query", folder)
    idx = open_index(folder / ".hareid-index", embedder_for(tiny).dim, create=True)
    try:
        idx.set_setting("root", "/")
        return int(idx.add(np.ones((1, idx.dim), np.float32), paths=[str(secret)])[0])
    finally:
        idx.close()


def test_case03_crafted_index_in_a_gallery_folder_serves_no_outside_file(tiny: Tiny, tmp_path: Path) -> None:
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"\xff\xd8\xff top secret")
    item = _crafted_gallery(tiny, tmp_path / "gallery", secret)
    emb = embedder_for(tiny)
    app = create_app(emb, open_gallery(tmp_path / "gallery", emb, progress=False))
    with TestClient(app, base_url=LOCAL) as client:
        for i in (item, 0):  # the crafted item, and a readable check that the gallery itself works
            r = client.get(f"/gallery/{i}/image")
            assert b"secret" not in r.content
        assert client.get(f"/gallery/{item}/image").status_code == 404
        first = client.get("/gallery", params={"limit": 500}).json()["items"]
        real = [it for it in first if it["id"] != item]
        assert client.get(real[0]["image_url"]).status_code == 200


def test_case03_a_copied_gallery_serves_its_own_files(tiny: Tiny, tmp_path: Path) -> None:
    emb = embedder_for(tiny)
    original = Path(shutil.copytree(tiny.data / "bounding_box_test", tmp_path / "a"))
    open_gallery(original, emb, progress=False).index.close()
    copy = Path(shutil.copytree(original, tmp_path / "b"))
    first = sorted(p for p in copy.glob("*.jpg"))[0]
    first.write_bytes(jpeg(99))  # the copy's file differs from the original's
    app = create_app(emb, open_gallery(copy, emb, progress=False))
    with TestClient(app, base_url=LOCAL) as client:
        items = client.get("/gallery", params={"limit": 500}).json()["items"]
        (it,) = [x for x in items if x["name"] == first.name]
        assert client.get(it["image_url"]).content == first.read_bytes()
        assert it["path"] == first.name  # relative to the served folder, no absolute server path


def test_case03_an_index_alone_serves_no_gallery_file_without_images(tiny: Tiny, tmp_path: Path) -> None:
    emb = embedder_for(tiny)
    from hareid.index.build import index_gallery

    index_gallery(None, tiny.data, tmp_path / "idx", embedder=emb, workers=0, progress=False)
    app = create_app(emb, open_gallery(tmp_path / "idx", emb, progress=False))
    with TestClient(app, base_url=LOCAL) as client:
        assert client.get("/gallery/0/image").status_code == 404
    app = create_app(emb, open_gallery(tmp_path / "idx", emb, images=tiny.data, progress=False))
    with TestClient(app, base_url=LOCAL) as client:
        assert client.get("/gallery/0/image").status_code == 200


# ----------------------------------------------------------------------- 4. Origin and Host
def test_case04_cross_origin_and_rebound_host_are_refused(tiny: Tiny, tmp_path: Path) -> None:
    app = make_app(tiny, tmp_path, allow_origins=["https://app.example"])
    index = app.state.gallery.index
    n = len(index)
    files = {"images": ("x.jpg", jpeg(7), "image/jpeg")}
    with TestClient(app, base_url=LOCAL) as client:
        r = client.post("/gallery", files=files, headers={"Origin": "http://evil.example"})
        assert r.status_code == 403 and "--allow-origin" in r.json()["detail"]
        assert client.post("/gallery", files=files, headers={"Origin": "null"}).status_code == 403
        assert len(index) == n and not list((tmp_path / "uploads").iterdir())
        rebound = client.get("/healthz", headers={"Host": "evil.example:8000"})  # DNS rebinding
        assert rebound.status_code == 403 and "count" not in rebound.text
        assert client.get("/healthz", headers={"Host": "localhost:8000"}).status_code == 200
        own = client.post("/gallery", files=files, headers={"Origin": LOCAL})  # the page itself
        assert own.status_code == 200, own.text
        named = client.get("/healthz", headers={"Origin": "https://app.example"})
        assert named.status_code == 200 and named.headers["access-control-allow-origin"] == "https://app.example"
    with TestClient(app) as other:  # Starlette's default Host "testserver" is no name of this server
        assert other.get("/healthz").status_code == 403


# -------------------------------------------------------------------- 11. Ctrl-C on serve
def test_case11_serve_sigint_exits_130(tiny: Tiny, tmp_path: Path) -> None:
    from hareid.index.build import index_gallery

    index_gallery(None, tiny.data, tmp_path / "idx", embedder=embedder_for(tiny), workers=0, progress=False)
    proc = subprocess.Popen([sys.executable, "-m", "hareid", "serve", str(tiny.checkpoint), "--gallery",
                             str(tmp_path / "idx"), "--port", "0", "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    try:
        for line in proc.stderr:  # uvicorn logs to stderr
            if "startup complete" in line:
                break
        else:
            pytest.fail(f"serve did not start ({proc.wait()})")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()


# ------------------------------------------------------------- 13 / lesser: server options
def test_case13_serve_options_are_checked_before_indexing(tiny: Tiny, tmp_path: Path, capsys) -> None:
    gallery = Path(shutil.copytree(tiny.data / "query", tmp_path / "g"))
    for option, value, expected in (("--port", "70000", "must be <= 65535"), ("--max-batch", "0", "must be >= 1")):
        rc, _, err = cli(capsys, "serve", tiny.checkpoint, "--gallery", gallery, option, value)
        line = error_line(err)
        assert rc == 2 and option in line and expected in line
    assert not (gallery / ".hareid-index").exists()


def test_lesser_error_details_name_no_absolute_server_path(tiny: Tiny, tmp_path: Path) -> None:
    app = make_app(tiny, tmp_path)
    files = {"images": ("x.jpg", jpeg(3), "image/jpeg")}
    with TestClient(app, base_url=LOCAL) as client:
        assert client.post("/gallery", files=files).status_code == 200
        r = client.post("/gallery", files=files)
        assert r.status_code == 409 and "already in the index" in r.json()["detail"]
        assert str(tmp_path) not in r.text and str(tiny.data) not in r.text


def test_lesser_a_stalled_body_is_dropped(tiny: Tiny, tmp_path: Path) -> None:
    """A client that sends part of a body and stops is answered 408 and loses its connection
    (the probe held 300 such connections for 45 s+)."""
    import socket

    from hareid.serve import Limits
    from tests.helpers.serve import LiveServer

    server = LiveServer(make_app(tiny, tmp_path, limits=Limits(body_timeout_s=1.0)))
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
            s.sendall(b"POST /embed HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                      b"boundary=x\r\nContent-Length: 5000\r\n\r\n--x\r\n")
            t0 = time.monotonic()
            reply = s.recv(4096)
            assert b" 408 " in reply.split(b"\r\n", 1)[0] and time.monotonic() - t0 < 20
    finally:
        server.stop()
