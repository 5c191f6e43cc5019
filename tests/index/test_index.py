"""Gallery indexes (FAISS + SQLite, milvus-lite) against brute force: search, filters, pages,
add/delete while searching, restarts, and a process killed mid-insert."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faiss")

from hareid.errors import HareidError
from hareid.index import FaissIndex, Filter, GalleryIndex, Item, open_index

BACKENDS = ["faiss-memory", "faiss-disk", "milvus-lite"]


def _milvus_ok() -> bool:
    try:
        import milvus_lite  # noqa: F401
        import pymilvus  # noqa: F401
    except ImportError:
        return False
    return True


def make_index(backend: str, tmp: Path, dim: int, **kw):
    if backend == "faiss-memory":
        return FaissIndex(dim, **kw)
    if backend == "faiss-disk":
        return open_index(tmp / "idx", dim, create=True, **kw)
    if not _milvus_ok():
        pytest.skip("pymilvus / milvus-lite not installed: pip install 'hareid[milvus]'")
    return open_index(tmp / "gallery.db", dim, create=True, **kw)


def reopen(backend: str, tmp: Path, index):
    index.close()
    return open_index(tmp / ("idx" if backend == "faiss-disk" else "gallery.db"))


def data(n=600, q=12, d=32, seed=0):
    rng = np.random.default_rng(seed)
    g = rng.normal(size=(n, d)).astype(np.float32)
    x = rng.normal(size=(q, d)).astype(np.float32)
    meta = {"paths": [f"g/{i:04d}.jpg" for i in range(n)], "pids": rng.integers(0, 50, n),
            "cameras": [["c1", "c2", "lobby", 'o"hare\'s'][i % 4] for i in range(n)],
            "times": [None if i % 7 == 0 else float(i) for i in range(n)],
            "sources": ["gallery" if i % 3 else "upload" for i in range(n)]}
    return g, x, meta


def unit(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def brute(g, x, k, allowed=None):
    sims = unit(x) @ unit(g).T  # (Q, N)
    if allowed is not None:
        sims = np.where(allowed[None], sims, -np.inf)
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    s = np.take_along_axis(sims, top, 1)
    return [t[np.isfinite(v)] for t, v in zip(top, s)], [v[np.isfinite(v)] for v in s]


def items_of(meta, ids, first_id):
    return [Item(int(i) + first_id, meta["paths"][i], meta["cameras"][i], meta["times"][i],
                 meta["sources"][i], int(meta["pids"][i])) for i in ids]


@pytest.mark.parametrize("backend", BACKENDS)
def test_exact_search_equals_brute_force(backend: str, tmp_path: Path) -> None:
    g, x, meta = data()
    index = make_index(backend, tmp_path, 32)
    cut = 250
    ids = np.concatenate([index.add(g[:cut], **{k: v[:cut] for k, v in meta.items()}),
                          index.add(g[cut:], **{k: v[cut:] for k, v in meta.items()})])
    assert len(index) == len(g) and len(set(ids.tolist())) == len(g)
    first = int(ids[0])
    assert (ids == np.arange(first, first + len(g))).all()  # ids in add order
    ref_i, ref_s = brute(g, x, 10)
    for r, i, s in zip(index.search(x, k=10), ref_i, ref_s):
        assert (r.ids - first).tolist() == i.tolist()
        np.testing.assert_allclose(r.scores, s, atol=1e-5)
        assert r.items == items_of(meta, i, first)
        np.testing.assert_allclose(r.distances, 2 - 2 * s, atol=1e-5)
    np.testing.assert_allclose(index.vectors(ids[[3, 500]]), unit(g[[3, 500]]), atol=1e-6)
    index.close()


FILTERS = [
    Filter(cameras=["c1"]),
    Filter(cameras=["c2", 'o"hare\'s'], time_min=100.0),
    Filter(time_min=50, time_max=60),
    Filter(sources=["upload"], cameras=["lobby"]),
    Filter(cameras=[]),
    Filter(cameras=["nowhere"]),
    Filter(time_min=598.5),  # one item
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_filters_equal_brute_force(backend: str, tmp_path: Path) -> None:
    g, x, meta = data()
    index = make_index(backend, tmp_path, 32)
    first = int(index.add(g, **meta)[0])
    everything = items_of(meta, range(len(g)), 0)
    strategies = ["auto", "prefilter", "postfilter"] if backend.startswith("faiss") else ["db"]
    for flt in FILTERS:
        allowed = np.array([flt.matches(it) for it in everything])
        ref_i, ref_s = brute(g, x, 7, allowed)
        for strategy in strategies:
            if strategy != "db":
                index.filter_strategy = strategy
                index.prefilter_max = 40  # both auto paths: selective (ids) and broad (over-fetch)
            res = index.search(x, k=7, filter=flt)
            for r, i, s in zip(res, ref_i, ref_s):
                assert (r.ids - first).tolist() == i.tolist(), (flt, strategy)
                np.testing.assert_allclose(r.scores, s, atol=1e-5)
                assert all(flt.matches(it) for it in r.items)
    index.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_pages_delete_and_restart(backend: str, tmp_path: Path) -> None:
    g, x, meta = data(n=300)
    index = make_index(backend, tmp_path, 32)
    ids = index.add(g, **meta)
    full = index.search(x, k=30)
    for offset in (0, 10, 20):  # pagination = slices of one longer list
        page = index.search(x, k=10, offset=offset)
        for p, f in zip(page, full):
            assert p.ids.tolist() == f.ids[offset : offset + 10].tolist()
    gone = full[0].ids[:3].tolist()
    assert index.delete([*gone, 10**9]) == 3 and len(index) == 297
    assert index.get([gone[0], int(ids[-1])]) == [None, items_of(meta, [299], int(ids[0]))[0]]
    after = index.search(x[:1], k=10)[0]
    assert not set(gone) & set(after.ids.tolist())
    assert after.ids.tolist() == [i for i in full[0].ids.tolist() if i not in gone][:10]
    new = index.add(g[:2] + 0.01, paths=["new/a.jpg", "new/b.jpg"], cameras="c9", times=1.5)
    facets = index.facets()
    assert "c9" in facets["cameras"] and facets["time_min"] == 1.0 and facets["time_max"] == 299.0
    before = index.search(x, k=10)
    if backend == "faiss-memory":
        saved = tmp_path / "saved"
        index.save(saved)
        index.close()
        index = FaissIndex.open(saved)
    else:
        index = reopen(backend, tmp_path, index)
    assert len(index) == 299
    for r, b in zip(index.search(x, k=10), before):
        assert r.ids.tolist() == b.ids.tolist() and r.items == b.items
    assert index.get(new.tolist())[1].camera == "c9"
    assert index.indexed_paths() == {*meta["paths"], "new/a.jpg", "new/b.jpg"} - {
        meta["paths"][int(i - ids[0])] for i in gone}
    with pytest.raises(HareidError, match="already in the index"):
        index.add(g[:1], paths=["new/a.jpg"])
    assert len(index) == 299  # nothing half-added
    index.close()


def test_add_and_delete_while_searching(tmp_path: Path) -> None:
    """Readers never see an error or a deleted id while a writer adds and deletes."""
    g, x, meta = data(n=2000)
    index = FaissIndex(32, path=tmp_path / "idx", checkpoint_min=300)  # snapshots happen meanwhile
    index.add(g[:500], paths=meta["paths"][:500])
    errors: list[BaseException] = []
    deleted: set[int] = set()
    stop = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                before = set(deleted)
                for r in index.search(x, k=5):
                    assert not before & set(r.ids.tolist())
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for start in range(500, 2000, 100):
        new = index.add(g[start : start + 100], paths=meta["paths"][start : start + 100])
        index.delete(new[:10].tolist())
        deleted.update(new[:10].tolist())
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert len(index) == 2000 - 150
    assert index._gen >= 2  # snapshots were written while readers ran
    index.close()
    again = FaissIndex.open(tmp_path / "idx")
    assert len(again) == 1850 and not deleted & {i.id for i in again.items()}
    again.close()


def test_ivf_trains_itself_and_ivfpq_roundtrip(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(40, 32)).astype(np.float32)
    g = centres[np.arange(3000) % 40] + 0.3 * rng.normal(size=(3000, 32)).astype(np.float32)
    ivf = FaissIndex(32, kind="ivf", nlist=16, nprobe=16, path=tmp_path / "ivf")
    assert ivf.train_size == 39 * 16
    ivf.add(g[:300])
    assert not ivf.index.is_trained  # too few to train: searched exactly meanwhile
    ref_i, _ = brute(g[:300], g[:20], 5)
    assert [r.ids.tolist() for r in ivf.search(g[:20], 5)] == [i.tolist() for i in ref_i]
    ivf.close()
    ivf = FaissIndex.open(tmp_path / "ivf")  # the buffered vectors survive a restart
    assert len(ivf) == 300 and not ivf.index.is_trained
    ivf.add(g[300:])
    assert ivf.index.is_trained and ivf._gen == 1  # trained, snapshot written at once
    ref_i, _ = brute(g, g[:50], 5)
    _, got = ivf.search_arrays(g[:50], 5)  # nprobe = nlist: exhaustive, exact
    assert (got == np.stack(ref_i)).mean() > 0.99
    ivf.close()

    pq = FaissIndex(32, kind="ivfpq", nlist=8, pq_m=8, pq_nbits=6, path=tmp_path / "pq")
    pq.add(g)
    assert pq.index.is_trained
    _, top = pq.search_arrays(g[:200], 1)  # PQ is approximate: the match is in the same cluster
    assert (top[:, 0] % 40 == np.arange(200) % 40).mean() > 0.95
    ids_before = pq.search_arrays(g[:30], 5)[1]
    pq.close()
    pq = open_index(tmp_path / "pq")
    assert pq.kind == "ivfpq" and len(pq) == 3000
    np.testing.assert_array_equal(pq.search_arrays(g[:30], 5)[1], ids_before)
    pq.close()


def test_errors_and_single_writer(tmp_path: Path) -> None:
    with pytest.raises(HareidError, match="not a saved GalleryIndex"):
        FaissIndex.open(tmp_path / "nothing")
    with pytest.raises(HareidError, match="unknown index kind"):
        FaissIndex(8, kind="hnsw")
    with pytest.raises(HareidError, match="pq_m=5 must divide"):
        FaissIndex(32, kind="ivfpq", pq_m=5)
    index = FaissIndex(8, path=tmp_path / "idx")
    index.add(np.eye(8, dtype=np.float32), paths=[f"{i}.jpg" for i in range(8)])
    with pytest.raises(ValueError, match=r"features must be \(N, 8\)"):
        index.search(np.zeros((1, 9), np.float32))
    with pytest.raises(ValueError, match="3 paths"):
        index.add(np.eye(8, dtype=np.float32), paths=["a", "b", "c"])
    with pytest.raises(HareidError, match="given twice"):
        index.add(np.eye(8, dtype=np.float32)[:2], paths=["x.jpg", "x.jpg"])
    with pytest.raises(HareidError, match=r"time_min 5\.0 > time_max 1\.0"):
        Filter(time_min=5, time_max=1)
    with pytest.raises(HareidError, match="open for writing in another process"):
        FaissIndex.open(tmp_path / "idx")
    reader = FaissIndex.open(tmp_path / "idx", read_only=True)  # a second process may read
    assert len(reader) == 8 and reader.search(np.eye(8)[:1], 1)[0].paths == ["0.jpg"]
    with pytest.raises(HareidError, match="read-only"):
        reader.delete([0])
    reader.close()
    index.close()
    with pytest.raises(HareidError, match="holds 8-d embeddings, not 16-d"):
        open_index(tmp_path / "idx", 16, create=True)
    files = sorted(p.name for p in (tmp_path / "idx").iterdir())
    assert files == ["gallery.sqlite", "index.1.faiss", "lock"]  # no pickle, no stray files
    tables = sqlite3.connect(tmp_path / "idx" / "gallery.sqlite").execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").fetchall()
    assert [t[0] for t in tables] == ["items", "pending", "pending_deletes", "settings"]


def test_old_api_still_works() -> None:
    """``GalleryIndex(dim, kind, nlist, nprobe)`` + positional add(features, paths, pids, camids)."""
    g, x, meta = data(n=100, d=16)
    index = GalleryIndex(16, kind="flat")
    index.add(g, meta["paths"], meta["pids"], np.arange(100) % 6)
    r = index.search(x[:2], k=100)[0]
    assert len(r.paths) == 100  # k clipped to the gallery size
    assert r.camids.tolist() == [int(i) % 6 for i in r.ids]
    assert index.paths == meta["paths"] and index.pids.tolist() == meta["pids"].tolist()


# ----------------------------------------------------------------------------------------- crashes

CHILD = """
import os, signal, sys, time
import numpy as np
from hareid.index import open_index

def vec(i):
    return np.random.default_rng(i).normal(size=16).astype(np.float32)

location, batch, kill_in_snapshot = {location!r}, {batch}, {kill_in_snapshot}
if kill_in_snapshot:  # die after the new snapshot is written, before it is renamed into place
    import hareid.index.faiss_store as fs
    def die(src, dst):
        os.kill(os.getpid(), signal.SIGKILL)
    fs.os.replace = die
index = open_index(location, 16, create=True, **{kw})
start = sum(p.startswith("img/") for p in index.indexed_paths())
for b in range(10**6):
    first = start + b * batch
    index.add(np.stack([vec(i) for i in range(first, first + batch)]),
              paths=[f"img/{{i}}.jpg" for i in range(first, first + batch)], cameras="c1")
    print(first + batch, flush=True)
"""


def run_and_kill(location: Path, tmp: Path, rows: int, kw: dict, kill_in_snapshot: bool = False) -> int:
    """Start a writer, SIGKILL it (with its process group) once ``rows`` rows are committed."""
    script = tmp / "child.py"
    script.write_text(textwrap.dedent(CHILD.format(
        location=str(location), batch=25, kill_in_snapshot=kill_in_snapshot, kw=kw)))
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    committed = 0
    deadline = time.monotonic() + 120
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            committed = int(line)
            if committed >= rows or time.monotonic() > deadline:
                break
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # mid-insert: the next add is under way
        proc.wait(30)
    return committed


def check_survivor(location: Path, at_least: int) -> int:
    index = open_index(location)
    paths = index.indexed_paths()
    n = sum(p.startswith("img/") for p in paths)
    assert n >= at_least and n % 25 == 0  # whole transactions only
    assert paths - {"after.jpg"} == {f"img/{i}.jpg" for i in range(n)}
    total = len(index)
    assert total == len(paths)
    probe = [0, n // 2, n - 1]
    for i, r in zip(probe, index.search(np.stack([np.random.default_rng(i).normal(size=16)
                                                  for i in probe]), k=1)):
        assert r.paths == [f"img/{i}.jpg"] and r.scores[0] > 0.9999  # every vector is there
    if "after.jpg" not in paths:  # and it takes writes again
        index.add(np.ones((1, 16), np.float32), paths=["after.jpg"])
    index.delete(index.add(np.ones((1, 16), np.float32) * 2, paths=["tmp.jpg"]).tolist())
    assert len(index) == total + ("after.jpg" not in paths)
    index.close()
    return n


def test_faiss_crash_mid_insert_and_mid_snapshot(tmp_path: Path) -> None:
    loc = tmp_path / "idx"
    kw = {"kind": "ivf", "nlist": 4, "train_size": 100, "checkpoint_min": 120}
    n1 = run_and_kill(loc, tmp_path, 400, kw)  # trained, several snapshots, killed mid-add
    assert n1 >= 400
    n1 = check_survivor(loc, n1)
    gen = json_setting(loc, "snapshot")
    assert gen >= 2
    n2 = run_and_kill(loc, tmp_path, n1 + 2000, kw, kill_in_snapshot=True)  # dies inside a snapshot
    assert n2 < n1 + 2000  # it died by itself, in the snapshot
    assert any(p.name.endswith(".tmp") for p in loc.iterdir())  # the half-made snapshot
    assert json_setting(loc, "snapshot") == gen  # ... is not the one SQLite names
    check_survivor(loc, n1 + 1)
    assert not any(p.name.endswith(".tmp") for p in loc.iterdir())  # and is cleared on open


def json_setting(loc: Path, key: str) -> int:
    row = sqlite3.connect(loc / "gallery.sqlite").execute(
        "SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
    return int(row[0])


def test_milvus_lite_crash_mid_insert(tmp_path: Path) -> None:
    if not _milvus_ok():
        pytest.skip("pymilvus / milvus-lite not installed: pip install 'hareid[milvus]'")
    loc = tmp_path / "gallery.db"
    n = run_and_kill(loc, tmp_path, 300, {})
    check_survivor(loc, n - 25)  # the last acknowledged insert may or may not have reached the WAL
