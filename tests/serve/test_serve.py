"""`hareid serve`'s JSON API against the library: embed, search, filters, pages, add/delete,
image serving, batching, and abuse (each bad upload a 4xx; the server and the index unharmed)."""

from __future__ import annotations

import asyncio
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers.serve import LiveServer, embedder_for, make_app, png_header
from tests.helpers.tiny import Tiny

pytest.importorskip("fastapi")
pytest.importorskip("faiss")
import httpx
from fastapi.testclient import TestClient

from hareid.index import Filter
from hareid.serve import Limits


@pytest.fixture(scope="module")
def served(tiny: Tiny, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("serve")
    app = make_app(tiny, tmp)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        yield app, client, tmp


def jpeg(path: Path) -> bytes:
    return path.read_bytes()


def test_health_docs_and_page_have_no_cdn(served) -> None:
    app, client, _ = served
    h = client.get("/healthz").json()
    assert h["status"] == "ok" and h["count"] == len(app.state.gallery.index) > 0 and h["dim"] == 1024
    spec = client.get("/openapi.json").json()
    assert {"/embed", "/search", "/gallery", "/gallery/{item_id}", "/healthz"} <= set(spec["paths"])
    assert "delete" in spec["paths"]["/gallery/{item_id}"]
    assert {"image", "embedding", "gallery_id", "k", "offset", "camera", "time_min", "time_max",
            "source"} <= set(json.dumps(spec["components"]).split('"'))
    docs = client.get("/docs").text
    assert "swagger-ui-bundle.js" in docs and "cdn" not in docs.lower()
    assert client.get("/static-offline-docs/swagger-ui-bundle.js").status_code == 200
    page = client.get("/").text
    assert '<input type="file" id="file"' in page
    for asset in ("/", "/static/app.js", "/static/style.css"):
        text = client.get(asset).text
        assert "http://" not in text and "https://" not in text  # everything ships in the package


def test_embed_equals_the_library(served, tiny: Tiny) -> None:
    _, client, _ = served
    q = tiny.images("query")[0]
    r = client.post("/embed", files={"image": (q.name, jpeg(q), "image/jpeg")})
    assert r.status_code == 200
    got = np.asarray(r.json()["embedding"], np.float32)
    from hareid.api import embed, load_model

    model, info = load_model(tiny.checkpoint)
    ref = embed(model, [q], info).numpy()[0]
    np.testing.assert_allclose(got, ref / np.linalg.norm(ref), atol=1e-4)
    assert abs(np.linalg.norm(got) - 1) < 1e-5


def test_search_by_image_embedding_and_gallery_item(served, tiny: Tiny) -> None:
    app, client, _ = served
    index = app.state.gallery.index
    q = tiny.images("query")[1]
    by_image = client.post("/search", files={"image": (q.name, jpeg(q), "image/jpeg")},
                           data={"k": 8, "attention": "true"}).json()
    vec = embedder_for(tiny).embed([str(q)])
    ref = index.search(vec, k=8)[0]
    assert [m["id"] for m in by_image["results"]] == ref.ids.tolist()
    np.testing.assert_allclose([m["score"] for m in by_image["results"]], ref.scores, atol=1e-5)
    assert [m["rank"] for m in by_image["results"]] == list(range(1, 9))
    assert by_image["query_attention"].startswith("data:image/png;base64,")
    assert by_image["query"] == {"kind": "image", "gallery_id": None, "name": q.name}
    by_vec = client.post("/search", data={"embedding": json.dumps(vec[0].tolist()), "k": 8}).json()
    assert [m["id"] for m in by_vec["results"]] == ref.ids.tolist()
    first = ref.items[0]
    by_item = client.post("/search", data={"gallery_id": first.id, "k": 3}).json()
    assert by_item["results"][0]["id"] == first.id and by_item["results"][0]["distance"] < 1e-5
    m = by_image["results"][0]
    assert (m["camera"], m["time"], m["pid"]) == (first.camera, first.time, first.pid)
    img = client.get(m["image_url"])
    assert img.status_code == 200 and img.content == Path(first.path).read_bytes()
    strip = client.get(m["attention_url"])
    with Image.open(io.BytesIO(strip.content)) as im:  # input + 3 stages, side by side, x2
        h, w = embedder_for(tiny).input_size
        assert im.size == (2 * (4 * w + 3 * 4), 2 * h)


def test_filters_and_pages_equal_the_library(served, tiny: Tiny) -> None:
    app, client, _ = served
    index = app.state.gallery.index
    q = tiny.images("query")[2]
    vec = embedder_for(tiny).embed([str(q)])
    files = {"image": (q.name, jpeg(q), "image/jpeg")}
    cams = index.facets()["cameras"]
    for form, flt in [({"camera": [cams[0]]}, Filter(cameras=[cams[0]])),
                      ({"camera": cams[:2], "time_min": 50, "time_max": 150},
                       Filter(cameras=cams[:2], time_min=50, time_max=150)),
                      ({"source": ["gallery"], "time_max": 80}, Filter(sources=["gallery"], time_max=80))]:
        res = client.post("/search", files=files, data={"k": 50, **form}).json()["results"]
        ref = index.search(vec, k=50, filter=flt)[0]
        assert [m["id"] for m in res] == ref.ids.tolist() and res
        assert all(flt.matches(it) for it in ref.items)
    full = client.post("/search", files=files, data={"k": 30}).json()
    pages = [client.post("/search", files=files, data={"k": 10, "offset": o}).json()
             for o in (0, 10, 20)]
    assert [m["id"] for p in pages for m in p["results"]] == [m["id"] for m in full["results"]]
    assert [m["rank"] for p in pages for m in p["results"]] == list(range(1, 31))
    n = len(index)
    last = client.post("/search", files=files, data={"k": 10, "offset": n - 5}).json()
    assert len(last["results"]) == 5 and not last["has_more"] and pages[0]["has_more"]
    facets = client.get("/gallery/facets").json()
    assert facets["cameras"] == cams and facets["count"] == n
    page = client.get("/gallery", params={"offset": 2, "limit": 5}).json()
    assert [it["id"] for it in page["items"]] == [it.id for it in index.items(2, 5)]


def test_add_is_searchable_at_once_then_delete(served, tiny: Tiny) -> None:
    app, client, tmp = served
    index = app.state.gallery.index
    n = len(index)
    new = tiny.images("query")[3:5]
    files = [("images", (p.name, jpeg(p), "image/jpeg")) for p in new]
    r = client.post("/gallery", files=files, data={"camera": "door", "time": ["5000", "5001"],
                                                   "source": "cam-feed"})
    assert r.status_code == 200, r.text
    ids = r.json()["ids"]
    assert r.json()["count"] == n + 2 and len(index) == n + 2
    hit = client.post("/search", files={"image": (new[1].name, jpeg(new[1]), "image/jpeg")},
                      data={"camera": "door", "k": 2}).json()["results"]
    assert hit[0]["id"] == ids[1] and hit[0]["distance"] < 1e-5
    assert (hit[0]["camera"], hit[0]["time"], hit[0]["source"]) == ("door", 5001.0, "cam-feed")
    assert "door" in client.get("/gallery/facets").json()["cameras"]
    stored = client.get(f"/gallery/{ids[0]}/image")
    assert stored.content == jpeg(new[0])  # kept as uploaded, under its content hash
    again = client.post("/gallery", files=files[:1])  # the same image twice: a conflict
    assert again.status_code == 409 and "already in the index" in again.json()["detail"]
    uploads = sorted(p.name for p in (tmp / "uploads").iterdir())
    assert len(uploads) == 2 and all(not u.endswith(".part") for u in uploads)
    assert client.delete(f"/gallery/{ids[0]}").json()["deleted"] == ids[0]
    assert client.delete(f"/gallery/{ids[0]}").status_code == 404
    assert client.get(f"/gallery/{ids[0]}").status_code == 404
    assert len(list((tmp / "uploads").iterdir())) == 1  # the uploaded file went with it
    client.delete(f"/gallery/{ids[1]}")
    assert len(index) == n


def test_values_the_database_cannot_hold_are_a_4xx_and_leave_no_file(served, tiny: Tiny) -> None:
    """A non-finite time, a pid or an id beyond 64 bits and a deeply nested embedding: each a 422
    with a message (never a 500), no stored upload left behind, the index unchanged."""
    app, client, tmp = served
    index = app.state.gallery.index
    n, uploads = len(index), sorted((tmp / "uploads").iterdir())
    image = tiny.images("query")[6]
    for data, word in (({"time": "inf"}, "finite"), ({"pid": str(2**70)}, "64 bits")):
        r = client.post("/gallery", files=[("images", (image.name, jpeg(image), "image/jpeg"))], data=data)
        assert r.status_code == 422 and word in r.json()["detail"], r.text
    assert len(index) == n and sorted((tmp / "uploads").iterdir()) == uploads
    assert client.post("/search", data={"gallery_id": str(2**70)}).status_code == 422
    for route in (f"/gallery/{2**70}", f"/gallery/{2**70}/image", f"/gallery/{2**70}/attention.png"):
        assert client.get(route).status_code == 422, route
    assert client.delete(f"/gallery/{2**70}").status_code == 422
    r = client.post("/search", data={"embedding": "[" * 100_000})
    assert r.status_code == 422 and "JSON list" in r.json()["detail"]
    assert client.get("/healthz").json()["status"] == "ok"


def test_images_are_served_only_from_the_gallery(served, tmp_path: Path) -> None:
    app, client, tmp = served
    index = app.state.gallery.index
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(b"\xff\xd8\xff secret")
    link = tmp / "uploads" / "link.jpg"  # inside an allowed folder, pointing out of it
    link.symlink_to("/etc/hostname")
    ids = index.add(np.ones((2, index.dim), np.float32), paths=[str(outside), str(link)])
    try:
        for i in ids:
            r = client.get(f"/gallery/{int(i)}/image")
            assert r.status_code == 404 and "not in the gallery folder" in r.json()["detail"]
        for url in ("/gallery/..%2F..%2Fetc%2Fpasswd/image", "/gallery/../../etc/passwd",
                    "/static/..%2F..%2F..%2Fapi.py", "/static/../app.py", "/gallery/-1/image",
                    "/gallery/99999999/image"):
            r = client.get(url)
            assert 400 <= r.status_code < 500, url
            assert b"secret" not in r.content and b"import" not in r.content
    finally:
        index.delete(ids.tolist())
        link.unlink()


def _form(name: str, data: bytes, route: str = "/search") -> tuple[str, dict]:
    key = "images" if route == "/gallery" else "image"
    return route, {"files": {key: (name, data, "application/octet-stream")}}


ABUSE = {
    "text file": (_form("notes.txt", b"just some text\n" * 10), 415, "not an image"),
    "pdf": (_form("doc.pdf", b"%PDF-1.4\n" + b"0" * 100), 415, "not an image"),
    "gif": (_form("a.gif", b"GIF89a" + b"\x00" * 100), 415, "not an image"),
    "empty": (_form("e.jpg", b""), 400, "empty file"),
    "huge png header": (_form("bomb.png", png_header(100_000, 100_000)), 413, "pixels"),
    "big png header": (_form("big.png", png_header(8000, 8000)), 413, "64000000 pixels"),
    "50 MB to /search": (_form("big.jpg", b"\xff\xd8\xff" + b"\x00" * (50 * 2**20)), 413,
                         "limit is"),
    "50 MB to /gallery": (_form("big.jpg", b"\xff\xd8\xff" + b"\x00" * (50 * 2**20), "/gallery"),
                          413, "bytes per image"),
    "traversal name": (_form("../../etc/passwd.jpg", b"\xff\xd8\xff"), 400, "plain file name"),
    "traversal name gallery": (_form("..\\..\\x.jpg", b"\xff\xd8\xff", "/gallery"), 400,
                               "plain file name"),
    "embedding not json": (("/search", {"data": {"embedding": "[1, 2,"}}), 422, "JSON list"),
    "embedding wrong size": (("/search", {"data": {"embedding": "[1, 2, 3]"}}), 422,
                             "1024 finite numbers"),
    "no query": (("/search", {"data": {"k": "3"}}), 422, "exactly one of"),
    "k too large": (("/search", {"data": {"gallery_id": "0", "k": "100000"}}), 422, "k"),
    "times swapped": (("/search", {"data": {"gallery_id": "0", "time_min": "9", "time_max": "1"}}),
                      422, "time_min 9.0 > time_max 1.0"),
    "unknown item": (("/search", {"data": {"gallery_id": "123456789"}}), 404, "not found"),
}


def truncated_jpeg(tiny: Tiny) -> bytes:
    buf = io.BytesIO()
    with Image.open(tiny.images("query")[0]) as im:
        im.resize((256, 512)).save(buf, format="JPEG", quality=95)
    return buf.getvalue()[: len(buf.getvalue()) // 2]


@pytest.mark.parametrize("case", [*ABUSE, "truncated jpeg"])
def test_bad_requests_get_a_4xx_and_harm_nothing(served, tiny: Tiny, case: str) -> None:
    app, client, tmp = served
    index = app.state.gallery.index
    probe = tiny.images("query")[0]
    before = client.post("/search", files={"image": (probe.name, jpeg(probe), "image/jpeg")},
                         data={"k": 5}).json()["results"]
    n, uploads = len(index), set(os.listdir(tmp / "uploads"))
    if case == "truncated jpeg":
        (route, kw), status, text = _form("cut.jpg", truncated_jpeg(tiny), "/gallery"), 422, "truncated"
    else:
        (route, kw), status, text = ABUSE[case]
    r = client.post(route, **kw)
    assert r.status_code == status, (case, r.status_code, r.text[:300])
    detail = r.json()["detail"]
    assert text in (detail if isinstance(detail, str) else json.dumps(detail)), detail
    assert client.get("/healthz").json()["status"] == "ok"  # still serving
    after = client.post("/search", files={"image": (probe.name, jpeg(probe), "image/jpeg")},
                        data={"k": 5}).json()["results"]
    assert after == before and len(index) == n  # index intact
    assert set(os.listdir(tmp / "uploads")) == uploads  # nothing half-stored


def test_too_many_files_and_a_chunked_body(tiny: Tiny, tmp_path: Path) -> None:
    small = Limits(max_files=2, max_body_bytes=200_000, max_image_bytes=100_000)
    app = make_app(tiny, tmp_path, small)
    q = tiny.images("query")[0]
    with TestClient(app, base_url="http://127.0.0.1") as client:
        files = [("images", (f"{i}.jpg", jpeg(q), "image/jpeg")) for i in range(3)]
        r = client.post("/gallery", files=files)
        assert r.status_code == 413 and "limit is 2" in r.json()["detail"]

        def stream():  # no Content-Length: counted while it streams, cut at the limit
            yield (b'--zz\r\nContent-Disposition: form-data; name="images"; filename="a.jpg"\r\n'
                   b"Content-Type: image/jpeg\r\n\r\n\xff\xd8\xff")
            for _ in range(100):
                yield b"x" * 10_000

        r = client.post("/gallery", content=stream(),
                        headers={"content-type": "multipart/form-data; boundary=zz"})
        assert r.status_code == 413 and "limit is 200000" in r.json()["detail"]
        assert client.get("/healthz").json()["count"] == len(app.state.gallery.index)


def test_concurrent_requests_share_model_calls(tiny: Tiny, tmp_path: Path) -> None:
    app = make_app(tiny, tmp_path, max_batch=32, max_wait_s=0.05)
    imgs = tiny.images("query")[:8] * 2
    single = embedder_for(tiny).embed([str(p) for p in imgs])

    async def fire() -> list[dict]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            rs = await asyncio.gather(*[c.post("/embed", files={"image": (p.name, jpeg(p), "image/jpeg")})
                                        for p in imgs])
            return [r.json() for r in rs]

    out = asyncio.run(fire())
    np.testing.assert_allclose(np.asarray([o["embedding"] for o in out]), single, atol=1e-5)
    stats = app.state.batchers["embed"].stats()
    assert stats["items"] == 16 and stats["calls"] < 16 and stats["largest_batch"] > 1


def test_real_socket_oversized_upload(tiny: Tiny, tmp_path: Path) -> None:
    """Over TCP (uvicorn): a 50 MB upload is answered 413 and the server keeps serving."""
    server = LiveServer(make_app(tiny, tmp_path))
    try:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            big = b"\xff\xd8\xff" + b"\x00" * (50 * 2**20)
            r = c.post("/search", files={"image": ("big.jpg", big, "image/jpeg")})
            assert r.status_code == 413 and "limit is" in r.json()["detail"]  # before reading it
            r = c.post("/gallery", files={"images": ("big.jpg", big, "image/jpeg")})
            assert r.status_code == 413 and "bytes per image" in r.json()["detail"]
            assert c.get("/healthz").json()["status"] == "ok"
            q = tiny.images("query")[0]
            assert c.post("/search", files={"image": (q.name, jpeg(q), "image/jpeg")}).status_code == 200
    finally:
        server.stop()


def test_milvus_lite_behind_the_api(tiny: Tiny, tmp_path: Path) -> None:
    """The same routes over the Milvus backend: search = the library, filters, add, delete."""
    pytest.importorskip("pymilvus")
    app = make_app(tiny, tmp_path, backend="milvus")
    index = app.state.gallery.index
    assert index.backend == "milvus"
    q = tiny.images("query")[0]
    vec = embedder_for(tiny).embed([str(q)])
    files = {"image": (q.name, jpeg(q), "image/jpeg")}
    with TestClient(app, base_url="http://127.0.0.1") as client:
        res = client.post("/search", files=files, data={"k": 6}).json()["results"]
        assert [m["id"] for m in res] == index.search(vec, k=6)[0].ids.tolist()
        cam = res[0]["camera"]
        res = client.post("/search", files=files, data={"k": 6, "camera": cam, "time_max": 100}).json()
        assert res["results"] and all(m["camera"] == cam and m["time"] <= 100 for m in res["results"])
        new = client.post("/gallery", files={"images": (q.name, jpeg(q), "image/jpeg")},
                          data={"camera": "door"}).json()["ids"][0]
        top = client.post("/search", files=files, data={"k": 1, "camera": "door"}).json()["results"]
        assert top[0]["id"] == new and top[0]["distance"] < 1e-5
        assert client.delete(f"/gallery/{new}").status_code == 200
        assert client.post("/search", files=files, data={"camera": "door"}).json()["results"] == []
