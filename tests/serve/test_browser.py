"""The `hareid serve` page in a real browser (headless Debian chromium + chromedriver, selenium).

Upload a query, see the ranked matches and their attention, filter by camera and time, page, open
a match, search from it, add an image, click a gallery image. Screenshots of each step are test
artefacts: ``test-artifacts/serve_browser/*.png`` under the repository (``$HAREID_ARTIFACTS``
moves them).
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.serve import LiveServer, embedder_for, make_app
from tests.helpers.tiny import Tiny

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver"
                                          if Path("/usr/bin/chromedriver").is_file() else None)
try:
    import selenium
except ImportError:
    selenium = None

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                       reason="chromium / chromedriver not installed "
                              "(apt-get install -y chromium chromium-driver)"),
    pytest.mark.skipif(selenium is None, reason="selenium not installed (pip install selenium)"),
]
pytest.importorskip("fastapi")
pytest.importorskip("faiss")

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("HAREID_ARTIFACTS", ROOT / "test-artifacts")) / "serve_browser"


@pytest.fixture(scope="module")
def server(tiny: Tiny, tmp_path_factory: pytest.TempPathFactory):
    live = LiveServer(make_app(tiny, tmp_path_factory.mktemp("browser")))
    yield live
    live.stop()


@pytest.fixture(scope="module")
def driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="hareid-chromium-")
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1400,2400"):
        opts.add_argument(arg)
    d = webdriver.Chrome(service=Service(DRIVER), options=opts)
    d.set_page_load_timeout(60)
    yield d
    d.quit()
    shutil.rmtree(profile, ignore_errors=True)


def shot(d, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    d.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def renders(d) -> int:
    return int(d.find_element("tag name", "body").get_attribute("data-renders"))


def wait_render(d, before: int) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(d, 60).until(lambda d: renders(d) > before
                               and d.find_element("tag name", "body").get_attribute("data-state") == "idle")


def cards(d) -> list[dict]:
    return d.execute_script("""
        return [...document.querySelectorAll('#results .card')].map(c => ({
          id: Number(c.dataset.id), camera: c.dataset.camera,
          time: c.dataset.time === '' ? null : Number(c.dataset.time),
          rank: Number(c.dataset.rank), distance: Number(c.dataset.distance)}));""")


def loaded(d, css: str) -> list[bool]:
    return d.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(i => i.complete && i.naturalWidth > 0);", css)


def test_search_filter_page_and_open_a_match(server, driver, tiny: Tiny) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    d = driver
    index = server.server.config.app.state.gallery.index
    d.get(server.url + "/")
    WebDriverWait(d, 60).until(lambda d: d.find_element("tag name", "body").get_attribute("data-state") == "idle")
    assert f"{len(index)} gallery images" in d.find_element("id", "status").text
    items = index.items()
    query = items[5]

    # 1. upload a query (a gallery image: it must find itself first)
    before = renders(d)
    d.find_element("id", "file").send_keys(query.path)
    wait_render(d, before)
    res = cards(d)
    assert len(res) == 24 and [c["rank"] for c in res] == list(range(1, 25))
    assert res[0]["id"] == query.id and res[0]["distance"] < 1e-4
    assert all(a["distance"] <= b["distance"] + 1e-6 for a, b in itertools.pairwise(res))
    vec = embedder_for(tiny).embed([query.path])
    assert [c["id"] for c in res] == index.search(vec, k=24)[0].ids.tolist()  # the library's answer
    WebDriverWait(d, 60).until(lambda d: all(loaded(d, "#results img")) and all(loaded(d, "#query img")))
    shot(d, "1_results")

    # 2. filter: one camera and a time range
    cams = index.facets()["cameras"]
    keep = cams[1]
    for box in d.find_elements("css selector", "#cameras input"):
        if box.get_attribute("value") != keep:
            box.click()
    d.find_element("id", "tmin").send_keys("50")
    d.find_element("id", "tmax").send_keys("150")
    before = renders(d)
    d.find_element("id", "apply").click()
    wait_render(d, before)
    res = cards(d)
    from hareid.index import Filter

    ref = index.search(vec, k=24, filter=Filter(cameras=[keep], time_min=50, time_max=150))[0]
    assert all(c["camera"] == keep and 50 <= c["time"] <= 150 for c in res), res
    assert res and [c["id"] for c in res] == ref.ids.tolist()
    shot(d, "2_filtered")

    # 3. reset, 12 per page, next page
    before = renders(d)
    d.find_element("id", "reset").click()
    wait_render(d, before)
    from selenium.webdriver.support.ui import Select

    before = renders(d)
    Select(d.find_element("id", "k")).select_by_visible_text("12")
    wait_render(d, before)
    first_page = [c["id"] for c in cards(d)]
    before = renders(d)
    d.find_element("id", "next").click()
    wait_render(d, before)
    second = cards(d)
    assert [c["rank"] for c in second] == list(range(13, 25))
    assert first_page + [c["id"] for c in second] == index.search(vec, k=24)[0].ids.tolist()
    assert "page 2" in d.find_element("id", "page-info").text

    # 4. open a match: query and match attention side by side
    d.find_elements("css selector", "#results .card")[1].click()
    WebDriverWait(d, 30).until(lambda d: d.execute_script("return document.getElementById('detail').open"))
    WebDriverWait(d, 60).until(lambda d: all(loaded(d, "#detail img")))
    meta = d.find_element("id", "detail-meta").text
    assert f"id\n{second[1]['id']}" in meta
    shot(d, "3_match")

    # 5. search with the match
    before = renders(d)
    d.find_element("id", "detail-search").click()
    wait_render(d, before)
    assert cards(d)[0]["id"] == second[1]["id"]
    assert not d.execute_script("return document.getElementById('detail').open")

    # 6. click a gallery thumbnail
    thumb = d.find_elements("css selector", "#gallery .card")[7]
    tid = int(thumb.get_attribute("data-id"))
    before = renders(d)
    thumb.click()
    wait_render(d, before)
    assert cards(d)[0]["id"] == tid


def test_add_an_image_from_the_page(server, driver, tiny: Tiny) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    d = driver
    index = server.server.config.app.state.gallery.index
    d.get(server.url + "/")
    WebDriverWait(d, 60).until(lambda d: d.find_element("tag name", "body").get_attribute("data-state") == "idle")
    n = len(index)
    new = tiny.images("query")[-1]
    d.find_element("id", "add-files").send_keys(str(new))
    d.find_element("id", "add-camera").send_keys("door 7")
    d.find_element("id", "add-time").send_keys("9000")
    d.find_element("id", "add-button").click()
    WebDriverWait(d, 60).until(lambda d: "added 1 image" in d.find_element("id", "message").text)
    assert len(index) == n + 1
    WebDriverWait(d, 30).until(lambda d: "door 7" in [b.get_attribute("value") for b in
                                                      d.find_elements("css selector", "#cameras input")])
    before = renders(d)
    d.find_element("id", "file").send_keys(str(new))
    wait_render(d, before)
    top = cards(d)[0]
    assert top["camera"] == "door 7" and top["time"] == 9000 and top["distance"] < 1e-4
    shot(d, "4_added")
    new_id = int(top["id"])
    np.testing.assert_allclose(index.vectors([new_id]), embedder_for(tiny).embed([str(new)]), atol=1e-5)

    # drag and drop: a file dropped on the drop zone is the query
    target = index.items()[3]
    before = renders(d)
    d.execute_script("""
        const [url, name] = arguments;
        fetch(url).then(r => r.blob()).then(blob => {
          const dt = new DataTransfer();
          dt.items.add(new File([blob], name, {type: blob.type}));
          const zone = document.getElementById('drop');
          zone.dispatchEvent(new DragEvent('dragover', {dataTransfer: dt, bubbles: true, cancelable: true}));
          zone.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
        });""", f"/gallery/{target.id}/image", "dropped.jpg")
    wait_render(d, before)
    assert cards(d)[0]["id"] == target.id and cards(d)[0]["distance"] < 1e-4


# --------------------------------------------------------------------------- people from footage
@pytest.fixture(scope="module")
def people_server(tiny: Tiny, tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("cv2")
    from tests.helpers.people import build_people, people_app

    people = build_people(tiny, tmp_path_factory.mktemp("people"))
    live = LiveServer(people_app(tiny, people, tmp_path_factory.mktemp("people-uploads")))
    live.people = people
    yield live
    live.stop()


def group_cards(d) -> list[dict]:
    return d.execute_script("""
        return [...document.querySelectorAll('#results .card')].map(c => ({
          id: Number(c.dataset.id), camera: c.dataset.camera, tracklet: c.dataset.tracklet,
          count: Number(c.dataset.count), rank: Number(c.dataset.rank),
          tmin: c.dataset.tmin === '' ? null : Number(c.dataset.tmin),
          tmax: c.dataset.tmax === '' ? null : Number(c.dataset.tmax)}));""")


def timeline(d) -> dict[str, list[float]]:
    return d.execute_script("""
        const out = {};
        for (const svg of document.querySelectorAll('#timeline svg'))
          out[svg.dataset.camera] = [...svg.querySelectorAll('line.tick')].map(t => Number(t.dataset.time));
        return out;""")


def test_people_grouped_with_timeline_filters_and_footage(people_server, driver, tiny: Tiny) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    from hareid.index import Filter

    d, people = driver, people_server.people
    index = people_server.server.config.app.state.gallery.index
    d.get(people_server.url + "/")
    WebDriverWait(d, 60).until(lambda d: d.find_element("tag name", "body").get_attribute("data-state") == "idle")
    assert d.find_element("id", "group").is_selected()  # the gallery holds tracklets
    assert [b.get_attribute("value") for b in d.find_elements("css selector", "#cameras input")] == [
        "archive", "east", "west"]  # the index's real camera names
    assert d.find_element("id", "dtmin").is_displayed() and not d.find_element("id", "tmin").is_displayed()

    # 1. a query crop: one card per person, as the library groups them, and the timeline
    j = 7
    before = renders(d)
    d.find_element("id", "file").send_keys(people.meta[j]["path"])
    wait_render(d, before)
    got = group_cards(d)
    vec = embedder_for(tiny).embed([people.meta[j]["path"]])
    ref = index.search_groups(vec, k=24, depth=500)[0].groups
    assert [c["id"] for c in got] == [g.best.id for g in ref] and len(got) == 12
    assert [c["count"] for c in got] == [g.count for g in ref]
    assert [(c["tmin"], c["tmax"]) for c in got] == [g.time_span for g in ref]
    named = [c["tracklet"] for c in got if c["tracklet"]]
    assert len(named) == len(set(named)) == 9  # each tracklet once; plain images alone
    want: dict[str, list[float]] = {}
    for g in ref:
        for it in g.items:
            if it.time is not None:
                want.setdefault(it.camera, []).append(it.time)
    lanes = timeline(d)
    assert {c: sorted(v) for c, v in lanes.items()} == {c: sorted(v) for c, v in want.items()}
    assert d.find_element("id", "timeline").is_displayed()
    WebDriverWait(d, 60).until(lambda d: all(loaded(d, "#results img.photo")))
    shot(d, "5_people_grouped")

    # 2. one camera, a wall-clock window (datetime inputs in the browser's time zone)
    for box in d.find_elements("css selector", "#cameras input"):
        if box.get_attribute("value") != "west":
            box.click()
    lo, hi = people.meta[0]["time"] + 62, people.meta[0]["time"] + 65
    d.execute_script("document.getElementById('dtmin').value = toLocalInput(arguments[0]);"
                     "document.getElementById('dtmax').value = toLocalInput(arguments[1]);", lo, hi)
    before = renders(d)
    d.find_element("id", "apply").click()
    wait_render(d, before)
    got = group_cards(d)
    ref = index.search_groups(vec, k=24, depth=500,
                              filter=Filter(cameras=["west"], time_min=lo, time_max=hi))[0].groups
    assert [c["id"] for c in got] == [g.best.id for g in ref]
    assert {c["tracklet"] for c in got} == {"west/A", "west/B"}
    assert all(c["camera"] == "west" and lo <= c["tmin"] <= c["tmax"] <= hi for c in got)
    assert list(timeline(d)) == ["west"]
    shot(d, "6_people_filtered")

    # 3. a person's card: the footage view (frame with the box, frames around) and its crops
    first = got[0]
    d.find_elements("css selector", "#results .card")[0].click()
    WebDriverWait(d, 30).until(lambda d: d.execute_script("return document.getElementById('detail').open"))
    WebDriverWait(d, 60).until(lambda d: all(loaded(d, "#detail-footage")) and all(loaded(d, "#detail-seen img")))
    size = d.execute_script("const i = document.getElementById('detail-footage'); return [i.naturalWidth, i.naturalHeight];")
    frame = index.get([first["id"]])[0].frame
    tiles = len([f for f in range(frame - 10, frame + 11, 5) if 0 <= f < 100])
    assert size == [tiles * 320 + (tiles - 1) * 6, 240]  # frames 320x240, never scaled up
    assert len(d.find_elements("css selector", "#detail-seen .card")) == first["count"]
    assert "tracklet" in d.find_element("id", "detail-meta").text
    shot(d, "7_people_footage")
    d.find_element("id", "detail-close").click()

    # 4. grouping off: single crops again, no timeline
    before = renders(d)
    d.find_element("id", "group").click()
    wait_render(d, before)
    assert not d.find_element("id", "timeline").is_displayed()
    ids = [c["id"] for c in cards(d)]
    assert ids == index.search(vec, k=24, filter=Filter(cameras=["west"], time_min=lo, time_max=hi))[0].ids.tolist()
