"""`hareid serve` speaks of people: results grouped by tracklet (= the library's search_groups),
filters by real camera names and absolute time, and the "show in footage" view (the frame with
the box, frames around it; only footage named on the command line)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers.people import CAMERAS, T0, People, build_people, frame_of, people_app
from tests.helpers.serve import embedder_for
from tests.helpers.tiny import Tiny

pytest.importorskip("fastapi")
pytest.importorskip("faiss")
pytest.importorskip("cv2")
from fastapi.testclient import TestClient

from hareid.index import Filter


@pytest.fixture(scope="module")
def people(tiny: Tiny, tmp_path_factory: pytest.TempPathFactory) -> People:
    return build_people(tiny, tmp_path_factory.mktemp("people"))


@pytest.fixture(scope="module")
def served(tiny: Tiny, people: People, tmp_path_factory: pytest.TempPathFactory):
    app = people_app(tiny, people, tmp_path_factory.mktemp("uploads"))
    with TestClient(app, base_url="http://127.0.0.1") as client:  # a loopback Host
        yield app, client


def query(people: People, j: int) -> dict:
    path = Path(people.meta[j]["path"])
    return {"files": {"image": (path.name, path.read_bytes(), "image/jpeg")}}


def test_grouped_results_equal_the_library(served, people: People, tiny: Tiny) -> None:
    app, client = served
    index = app.state.gallery.index
    j = 7  # a crop of a tracklet
    vec = embedder_for(tiny).embed([people.meta[j]["path"]])
    r = client.post("/search", **query(people, j), data={"k": 5, "group": "tracklet"}).json()
    ref = index.search_groups(vec, k=5, depth=r["depth"])[0]
    assert r["group"] == "tracklet" and r["depth"] == 500 and r["has_more"]
    assert [m["id"] for m in r["results"]] == [g.best.id for g in ref.groups]
    assert [g["best_id"] for g in r["groups"]] == [m["id"] for m in r["results"]]
    top = r["results"][0]  # the query itself, or its twin: both cameras film the same street
    assert top["distance"] < 1e-4 and top["name"] == Path(people.meta[j]["path"]).name
    n_items = len(people.meta)
    for g, m in zip(r["groups"], r["results"]):
        assert g["count"] == len(g["seen"]) and g["camera"] == m["camera"]
        if g["tracklet"]:  # depth >= gallery: every crop of the tracklet matched
            assert g["count"] == sum(x["tracklet"] == g["tracklet"] for x in people.meta)
            times = [s["time"] for s in g["seen"]]
            assert (g["time_min"], g["time_max"]) == (min(times), max(times))
            assert {index.get([s["id"]])[0].tracklet for s in g["seen"]} == {g["tracklet"]}
        else:
            assert g["count"] == 1 and g["time_min"] is None
        assert [s["score"] for s in g["seen"]] == sorted((s["score"] for s in g["seen"]), reverse=True)
    assert len({g["tracklet"] for g in r["groups"] if g["tracklet"]}) == sum(
        1 for g in r["groups"] if g["tracklet"])
    # pages over groups: three pages of 4 = one page of 12; the last page says no more
    pages = [client.post("/search", **query(people, j),
                         data={"k": 4, "offset": o, "group": "tracklet", "depth": n_items}).json()
             for o in (0, 4, 8)]
    one = client.post("/search", **query(people, j),
                      data={"k": 12, "group": "tracklet", "depth": n_items}).json()
    assert [m["id"] for p in pages for m in p["results"]] == [m["id"] for m in one["results"]]
    assert [g["rank"] for p in pages for g in p["groups"]] == list(range(1, 13))
    n_groups = len({m["tracklet"] or f"#{i}" for i, m in enumerate(people.meta)})
    last = client.post("/search", **query(people, j), data={"k": 50, "group": "tracklet",
                                                           "depth": n_items}).json()
    assert len(last["results"]) == n_groups and not last["has_more"]
    plain = client.post("/search", **query(people, j), data={"k": 5}).json()
    assert plain["group"] == "none" and plain["groups"] is None and plain["depth"] is None
    bad = client.post("/search", **query(people, j), data={"group": "person"})
    assert bad.status_code == 422
    deep = client.post("/search", **query(people, j), data={"group": "tracklet", "depth": 10**6})
    assert deep.status_code == 422


def test_real_camera_names_and_absolute_time_filters(served, people: People, tiny: Tiny) -> None:
    app, client = served
    index = app.state.gallery.index
    f = client.get("/gallery/facets").json()
    assert f["cameras"] == ["archive", "east", "west"] and f["tracklets"] == 9
    assert f["time_min"] == T0 and f["time_max"] == T0 + 60 + 9.5
    lo, hi = T0 + 62, T0 + 65  # frames 20-50 on camera west: A and B only
    r = client.post("/search", **query(people, 3), data={
        "k": 20, "group": "tracklet", "camera": ["west"], "time_min": lo, "time_max": hi}).json()
    vec = embedder_for(tiny).embed([people.meta[3]["path"]])
    ref = index.search_groups(vec, k=20, filter=Filter(cameras=["west"], time_min=lo, time_max=hi),
                              depth=r["depth"])[0]
    assert [m["id"] for m in r["results"]] == [g.best.id for g in ref.groups] and r["results"]
    for g in r["groups"]:
        assert all(s["camera"] == "west" and lo <= s["time"] <= hi for s in g["seen"])
    assert {g["tracklet"] for g in r["groups"]} == {"west/A", "west/B"}  # C, D come later


def test_footage_view_shows_the_frame_and_the_box(served, people: People) -> None:
    app, client = served
    index = app.state.gallery.index
    for cam in CAMERAS:
        j = next(i for i, m in enumerate(people.meta) if m["camera"] == cam and m["frame"] == 40
                 and m["tracklet"].endswith("/A"))
        it = index.get([j])[0]
        out = client.get(f"/gallery/{j}").json()
        assert out["footage_url"] == f"/gallery/{j}/footage" and out["frame"] == 40
        assert out["box"] == list(it.box)
        r = client.get(out["footage_url"], params={"context": 2, "step": 5, "width": 320})
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        with Image.open(io.BytesIO(r.content)) as im:
            shown = np.asarray(im.convert("RGB"))[:, :, ::-1].astype(int)  # BGR like OpenCV
        assert shown.shape == (240, 5 * 320 + 4 * 6, 3)  # frames 30, 35, 40, 45, 50
        centre = shown[:, 2 * 326 : 2 * 326 + 320]
        x1, y1, x2, y2 = (round(v) for v in it.box)
        assert np.abs(centre[y1, x1 + 5 : x2 - 5] - (0, 220, 255)).max() < 60  # the drawn box
        inside = frame_of(people, cam, 40)[y1 + 6 : y2 - 6, x1 + 6 : x2 - 6].astype(int)
        assert np.abs(centre[y1 + 6 : y2 - 6, x1 + 6 : x2 - 6] - inside).mean() < 12  # the frame
        before = shown[:, 326 : 326 + 320]  # frame 35: the figure stood 25 px further left
        assert np.abs(before - frame_of(people, cam, 35)).mean() < 12
    start = client.get("/gallery/0/footage", params={"context": 2, "step": 5, "width": 100})
    with Image.open(io.BytesIO(start.content)) as im:
        assert im.size == (3 * 100 + 2 * 6, 75)  # frames 0, 5, 10: none before the first
    hidden = len(people.meta) - 1  # its video exists but was not given with --footage
    assert client.get(f"/gallery/{hidden}").json()["footage_url"] is None
    r = client.get(f"/gallery/{hidden}/footage")
    assert r.status_code == 404 and "--footage" in r.json()["detail"]
    plain = next(i for i, m in enumerate(people.meta) if m["camera"] == "archive")
    r = client.get(f"/gallery/{plain}/footage")
    assert r.status_code == 404 and "no frame" in r.json()["detail"]
    for params in ({"context": 9}, {"step": 0}, {"width": 5000}):
        assert client.get("/gallery/3/footage", params=params).status_code == 422
    assert client.get("/gallery/99999/footage").status_code == 404


def test_footage_paths_come_from_the_command_line(tiny: Tiny, people: People, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    from hareid.cli import main
    from hareid.errors import DataError
    from hareid.serve.footage import FootageAccess

    with pytest.raises(DataError, match="no such file or folder"):
        FootageAccess([tmp_path / "nowhere"])
    link = tmp_path / "link.avi"  # a link inside an allowed folder pointing out of it
    link.symlink_to(people.hidden)
    access = FootageAccess([tmp_path, people.video])
    assert access.resolve(str(people.video)) == people.video.resolve()
    assert access.resolve(str(link)) is None and access.resolve(str(people.hidden)) is None
    assert access.resolve(str(people.frames_dir / "000001.png")) is None
    assert FootageAccess([]).resolve(str(people.video)) is None
    assert main(["serve", str(tiny.checkpoint), "--gallery", str(people.index_dir), "--footage",
                 str(tmp_path / "missing"), "--check"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith("missing: no such file or folder")  # one clear line
