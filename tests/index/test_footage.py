"""Footage facts in the gallery index: tracklet, frame and box stored, filtered and grouped by
every backend; indexes written before those fields existed still open (read-only and writable)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faiss")

from hareid.errors import HareidError
from hareid.index import FaissIndex, Filter, Item, open_index
from hareid.index.base import SearchResult, group_by_tracklet
from tests.helpers.toys import expected, footage

BACKENDS = ["faiss-memory", "faiss-disk", "milvus-lite"]


def make_index(backend: str, tmp: Path, dim: int):
    if backend == "faiss-memory":
        return FaissIndex(dim)
    if backend == "faiss-disk":
        return open_index(tmp / "idx", dim, create=True)
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    return open_index(tmp / "gallery.db", dim, create=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tracklet_frame_box_stored_filtered_and_grouped(backend: str, tmp_path: Path) -> None:
    x, meta = footage()
    index = make_index(backend, tmp_path, 16)
    ids = index.add(x, **{k: v for k, v in meta.items() if k in ("paths", "cameras", "times",
                                                                   "sources")},
                    tracklets=meta["tracklets"], frames=meta["frames"], boxes=meta["boxes"])
    first = int(ids[0])
    got = index.get([first + 1, first + 4, first + 5])
    assert got == [expected(meta, j, first) for j in (1, 4, 5)]
    assert got[0].box == (1.0, 2.0, 11.5, 32.0) and got[1].tracklet == "" and got[1].box is None
    assert got[2].time is None and got[2].tracklet == "cam2/5"
    assert index.items(0, 3) == [expected(meta, j, first) for j in range(3)]
    assert index.facets()["tracklets"] == 9

    # a tracklet filter (with a time bound: items without a time never match one) = brute force
    flt = Filter(tracklets=["cam1/1", "cam2/2"], time_min=1.7e9 + 20)
    res = index.search(x[:3], k=50, filter=flt)
    allowed = [j for j in range(len(x)) if flt.matches(expected(meta, j, first))]
    for r, q in zip(res, x[:3]):
        sims = (x[allowed] / np.linalg.norm(x[allowed], axis=1, keepdims=True)) @ (q / np.linalg.norm(q))
        assert (r.ids - first).tolist() == [allowed[j] for j in np.argsort(-sims, kind="stable")]
        assert all(flt.matches(it) for it in r.items) and r.items
    assert index.search(x[:1], k=5, filter=Filter(tracklets=[]))[0].ids.tolist() == []

    # grouping: groups ranked by their best crop, members best first, plain items alone
    full = index.search(x[7:8], k=len(x))[0]
    page = index.search_groups(x[7:8], k=4, offset=1, depth=len(x))[0]
    groups = group_by_tracklet(full)
    assert [g.best.id for g in page.groups] == [g.best.id for g in groups[1:5]]
    assert page.hits == len(x) and page.has_more
    seen: set[str] = set()
    for g in groups:
        assert g.scores == sorted(g.scores, reverse=True)
        if g.tracklet:
            assert g.tracklet not in seen and {it.tracklet for it in g.items} == {g.tracklet}
            seen.add(g.tracklet)
            assert g.count == meta["tracklets"].count(g.tracklet)  # depth = everything
        else:
            assert g.count == 1
    assert len(seen) == 9 and len(groups) == 9 + meta["tracklets"].count("")
    assert groups[0].best.id == first + 7  # the query itself
    lo, hi = groups[0].time_span
    ts = [t for t, tr in zip(meta["times"], meta["tracklets"]) if tr == groups[0].tracklet and t]
    assert (lo, hi) == (min(ts), max(ts))
    last = index.search_groups(x[7:8], k=50, depth=len(x) + 10)[0]
    assert not last.has_more and len(last.groups) == len(groups)
    index.close()


def test_bad_footage_metadata_is_one_clear_error() -> None:
    index = FaissIndex(4)
    x = np.eye(4, dtype=np.float32)
    for boxes, word in ([(0, 0, 1)] * 4, "four"), ([(5, 0, 1, 1)] * 4, "x1 <= x2"), \
                       ([(0, 0, float("nan"), 1)] * 4, "finite"), ("abcd", "four numbers"):
        with pytest.raises(HareidError, match=word):
            index.add(x, boxes=boxes)
    with pytest.raises(HareidError, match=r"tracklet .* the limit is 512"):
        index.add(x, tracklets="t" * 600)
    with pytest.raises(HareidError, match=r"frame .* 64 bits"):
        index.add(x, frames=2**70)
    assert len(index) == 0
    ids = index.add(x, boxes=(1, 2, 3, 4), frames=7)  # one box / frame for all
    assert {it.box for it in index.get(ids.tolist())} == {(1.0, 2.0, 3.0, 4.0)}


def _old_faiss_index(folder: Path) -> None:
    """An index as hareid 0.2 wrote it: items without the footage columns."""
    index = FaissIndex(4, path=folder)
    index.add(np.eye(4, dtype=np.float32), paths=[f"{i}.jpg" for i in range(4)], cameras="c1",
              times=[1.0, 2.0, None, 4.0])
    index.close()
    db = sqlite3.connect(folder / "gallery.sqlite")
    db.execute("DROP INDEX items_tracklet")
    for col in ("tracklet", "frame", "x1", "y1", "x2", "y2"):
        db.execute(f"ALTER TABLE items DROP COLUMN {col}")
    db.commit()
    db.close()


def test_faiss_index_of_an_earlier_version_opens(tmp_path: Path) -> None:
    folder = tmp_path / "old"
    _old_faiss_index(folder)
    ro = FaissIndex.open(folder, read_only=True)  # no writes: a temporary view supplies defaults
    assert ro.get([2]) == [Item(2, "2.jpg", "c1", None, "", -1)]
    hits = ro.search(np.eye(4)[:1], k=4, filter=Filter(tracklets=[""], time_min=2))[0]
    assert sorted(hits.ids.tolist()) == [1, 3]
    assert ro.facets()["tracklets"] == 0
    ro.close()
    cols = [r[1] for r in sqlite3.connect(folder / "gallery.sqlite").execute("PRAGMA table_info(items)")]
    assert "tracklet" not in cols  # read-only left the file alone
    rw = FaissIndex.open(folder)  # writable: the columns are added
    new = rw.add(np.ones((1, 4), np.float32), paths=["5.jpg"], tracklets="c1/9", frames=3,
                 boxes=(0, 0, 2, 4))
    assert rw.get([0, int(new[0])]) == [Item(0, "0.jpg", "c1", 1.0, "", -1),
                                        Item(int(new[0]), "5.jpg", "", None, "", -1, "c1/9", 3,
                                             (0.0, 0.0, 2.0, 4.0))]
    rw.close()
    assert FaissIndex.open(folder, read_only=True).get([4])[0].tracklet == "c1/9"


def test_milvus_lite_collection_of_an_earlier_version_opens(tmp_path: Path) -> None:
    """A format-1 collection (nullable time, no footage fields) opens, searches, filters by
    time and takes plain items; footage items are refused with a clear line."""
    pm = pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    uri = str(tmp_path / "old.db")
    c = pm.MilvusClient(uri=uri)
    dt = pm.DataType
    schema = c.create_schema(auto_id=True, enable_dynamic_field=False)
    schema.add_field("id", dt.INT64, is_primary=True)
    schema.add_field("vec", dt.FLOAT_VECTOR, dim=4)
    for name, n in (("path", 4096), ("camera", 256)):
        schema.add_field(name, dt.VARCHAR, max_length=n)
    schema.add_field("time", dt.DOUBLE, nullable=True)
    schema.add_field("source", dt.VARCHAR, max_length=1024)
    schema.add_field("pid", dt.INT64)
    params = c.prepare_index_params()
    params.add_index("vec", index_type="FLAT", metric_type="IP")
    settings = {"format": 1, "dim": 4, "kind": "flat", "nlist": 1024, "nprobe": 16, "pq_m": 64,
                "pq_nbits": 8}
    c.create_collection("hareid_gallery", schema=schema, index_params=params,
                        consistency_level="Strong",
                        properties={"hareid.settings": json.dumps(settings)})
    c.insert("hareid_gallery", [{"vec": [1, 0, 0, 0], "path": "a.jpg", "camera": "c1", "time": None,
                                 "source": "s", "pid": 3},
                                {"vec": [0.9, 0.1, 0, 0], "path": "b.jpg", "camera": "c1",
                                 "time": 5.0, "source": "s", "pid": 4}])
    c.close()
    index = open_index(uri)
    r = index.search(np.asarray([[1, 0, 0, 0]], np.float32), k=5)[0]
    assert [(it.path, it.time, it.tracklet, it.box) for it in r.items] == [
        ("a.jpg", None, "", None), ("b.jpg", 5.0, "", None)]
    assert index.search(np.eye(4)[:1], k=5, filter=Filter(time_min=1))[0].paths == ["b.jpg"]
    index.add(np.eye(4)[1:2], paths=["c.jpg"], times=[7.0])
    with pytest.raises(HareidError, match="no tracklet, frame or box fields"):
        index.add(np.eye(4)[2:3], paths=["d.jpg"], tracklets="t/1")
    assert index.facets()["time_max"] == 7.0 and len(index) == 3
    index.close()


def test_group_by_tracklet_keeps_order() -> None:
    items = [Item(1, tracklet="a"), Item(2), Item(3, tracklet="b"), Item(4, tracklet="a"), Item(5)]
    res = SearchResult(np.arange(1, 6), np.asarray([0.9, 0.8, 0.7, 0.6, 0.5], np.float32), items)
    groups = group_by_tracklet(res)
    assert [(g.tracklet, [it.id for it in g.items]) for g in groups] == [
        ("a", [1, 4]), ("", [2]), ("b", [3]), ("", [5])]
    assert groups[0].count == 2 and groups[0].score == pytest.approx(0.9)
