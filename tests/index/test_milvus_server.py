"""The Milvus backend on a real Milvus server (2.3, from the ``milvus`` package; skipped when it is
not installed): the footage schema without nullable fields, `hareid index` / `hareid search` with
``--collection``, and two `hareid serve` processes sharing one collection."""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.milvus_server import milvus_server
from tests.helpers.tiny import Tiny

pytest.importorskip("pymilvus")

from hareid.index import Filter, open_index

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def milvus_uri(tmp_path_factory: pytest.TempPathFactory):
    with milvus_server(tmp_path_factory.mktemp("milvus-server")) as uri:
        yield uri


def test_footage_items_on_a_server(milvus_uri: str) -> None:
    """Items without a time (the first batch used to fail: "the num_rows (0) of field (time) is
    not equal to passed num_rows"), tracklets, frames, boxes; filters and groups; a reopen."""
    from tests.helpers.toys import expected, footage

    x, meta = footage()
    index = open_index(milvus_uri, 16, create=True, collection="footage_test")
    assert index.describe()["lite"] is False
    ids = index.add(x, meta["paths"], None, meta["cameras"], meta["times"], meta["sources"],
                    tracklets=meta["tracklets"], frames=meta["frames"], boxes=meta["boxes"])
    first = int(ids[0])
    assert index.get([first + j for j in (0, 1, 4)]) == [expected(meta, j, first) for j in (0, 1, 4)]
    assert index.get([first])[0].time is None and index.get([first + 1])[0].time == 1.7e9 + 1
    for flt in (Filter(time_min=1.7e9 + 50), Filter(tracklets=["cam1/1"], cameras=["cam1"]),
                Filter(time_max=1.7e9 + 10, sources=["/videos/cam0.mp4"])):
        res = index.search(x[:2], k=200, filter=flt)
        want = {first + j for j in range(len(x)) if flt.matches(expected(meta, j, first))}
        for r in res:
            assert set(r.ids.tolist()) == want and want
    groups = index.search_groups(x[3:4], k=5, depth=len(x))[0].groups
    assert groups[0].best.id == first + 3 and groups[0].count == meta["tracklets"].count("cam0/3")
    f = index.facets()
    assert f["cameras"] == ["cam0", "cam1", "cam2"] and f["tracklets"] == 9
    assert f["time_min"] == 1.7e9 + 1 and f["time_max"] == 1.7e9 + 119
    assert index.delete([first, first + 1]) == 2 and len(index) == len(x) - 2
    index.close()
    again = open_index(milvus_uri, collection="footage_test")
    assert len(again) == len(x) - 2 and again.get([first + 5])[0] == expected(meta, 5, first)
    again.close()


def _gallery_csv(tiny: Tiny, out: Path, n: int = 12) -> Path:
    """A CSV of gallery images with a camera and no time (the case servers < 2.5 refused)."""
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "camera"])
        for p in tiny.images("gallery")[:n]:
            w.writerow([str(p), "gate"])
    return out


def test_cli_index_and_search_with_a_collection(milvus_uri: str, tiny: Tiny, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    from hareid.cli import main

    meta = _gallery_csv(tiny, tmp_path / "gallery.csv")
    args = ["index", str(tiny.checkpoint), str(tiny.data), "--out", milvus_uri, "--collection",
            "cli_test", "--meta", str(meta), "--quiet", "--workers", "0"]
    assert main(args) == 0
    assert "12 added" in capsys.readouterr().out
    assert main(args) == 0 and "0 added, 12 already indexed" in capsys.readouterr().out
    q = tiny.images("gallery")[4]
    assert main(["search", str(tiny.checkpoint), milvus_uri, str(q), "--collection", "cli_test",
                 "-k", "3", "--camera", "gate"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(q) and lines[1].split()[-1] == str(q)  # finds itself first
    assert len(lines) == 4
    with open_index(milvus_uri, collection="cli_test") as index:
        assert len(index) == 12 and {it.time for it in index.items()} == {None}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_serve(tiny: Tiny, uri: str, uploads: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "hareid", "serve", str(tiny.checkpoint),
                             "--gallery", uri, "--collection", "serve_test", "--uploads",
                             str(uploads), "--port", str(port), "--device", "cpu", "--quiet"],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env,  # noqa: SIM115
                            start_new_session=True)
    return proc, f"http://127.0.0.1:{port}"


def _wait_healthy(client, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if client.get("/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError("hareid serve did not start:\n" + log.read_text()[-2000:])
        time.sleep(0.5)


def test_two_serve_processes_share_one_collection(milvus_uri: str, tiny: Tiny,
                                                  tmp_path: Path) -> None:
    """An image added through one `hareid serve` is found (and served) through the other."""
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    from hareid.cli import main

    meta = _gallery_csv(tiny, tmp_path / "gallery.csv", n=8)
    assert main(["index", str(tiny.checkpoint), str(tiny.data), "--out", milvus_uri,
                 "--collection", "serve_test", "--meta", str(meta), "--quiet",
                 "--workers", "0"]) == 0
    uploads = tmp_path / "uploads"  # shared, as on one machine or a shared volume
    procs = [_start_serve(tiny, milvus_uri, uploads, tmp_path / f"serve{i}.log") for i in (0, 1)]
    try:
        a = httpx.Client(base_url=procs[0][1], timeout=60)
        b = httpx.Client(base_url=procs[1][1], timeout=60)
        for i, c in enumerate((a, b)):
            _wait_healthy(c, procs[i][0], tmp_path / f"serve{i}.log")
        assert a.get("/healthz").json()["count"] == b.get("/healthz").json()["count"] == 8
        new = tiny.images("query")[2]
        data = new.read_bytes()
        r = a.post("/gallery", files={"images": (new.name, data, "image/jpeg")},
                   data={"camera": "door", "time": "1700000000"})
        assert r.status_code == 200, r.text
        new_id = r.json()["ids"][0]
        hit = b.post("/search", files={"image": (new.name, data, "image/jpeg")},
                     data={"k": 3, "camera": "door"}).json()["results"]
        assert hit[0]["id"] == new_id and hit[0]["distance"] < 1e-4
        assert (hit[0]["camera"], hit[0]["time"]) == ("door", 1700000000.0)
        assert b.get(f"/gallery/{new_id}/image").content == data
        assert b.get("/healthz").json()["count"] == 9
        assert b.delete(f"/gallery/{new_id}").status_code == 200  # and back through the other
        assert a.get(f"/gallery/{new_id}").status_code == 404
        a.close()
        b.close()
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
        for proc, _ in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    assert all(p.returncode is not None for p, _ in procs)
