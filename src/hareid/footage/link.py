"""Cross-camera linking: tracklets of several cameras -> global identities.

Each tracklet is embedded as the mean of its crops' unit embeddings, re-normalised
(:func:`hareid.index.base.mean_unit`). Tracklets are clustered by average-linkage agglomeration on the cosine
distance (``1 - cos``), with the constraints footage gives for free (:func:`cannot_link`):

* two tracklets seen at the same time in one camera are two people;
* optional travel windows ``CAM_A:CAM_B:MIN_S:MAX_S``: a person seen in A and then in B (or B then
  A) took between MIN and MAX seconds from leaving one view to entering the other, so a pair of
  tracklets of A and B outside that window is two people (the window applies to every pair in a
  cluster; a negative MIN allows overlapping views, where one person is seen in both at once).

:func:`agglomerate` never merges two clusters holding a cannot-link pair and stops at the
distance ``threshold``. The pure functions here take arrays and :class:`Track` s; :func:`link_folders`
reads tracklets folders, embeds their crops and writes MOTChallenge files with global ids per
camera plus ``identities.json`` (``hareid link``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hareid.errors import DataError, HareidError
from hareid.fileio import atomic_folder
from hareid.index.base import mean_unit

__all__ = ["Track", "TravelWindow", "agglomerate", "auto_threshold", "cannot_link",
           "link_folders", "link_tracks", "load_tracks", "parse_travel",
           "write_links"]


@dataclass(frozen=True)
class Track:
    """One tracklet: global key ``"<camera>/<nnnn>"``, camera, absolute start/end (unix s), and its
    crops as ``(frame, box x1 y1 x2 y2, path)``."""

    key: str
    camera: str
    start: float
    end: float
    crops: tuple[tuple[int, tuple[float, float, float, float], str], ...] = ()


@dataclass(frozen=True)
class TravelWindow:
    """Between leaving one camera's view and entering the other's: ``lo`` to ``hi`` seconds."""

    a: str
    b: str
    lo: float
    hi: float


def parse_travel(text: str) -> TravelWindow:
    """``CAM_A:CAM_B:MIN_S:MAX_S`` -> :class:`TravelWindow` (a DataError names the bad value)."""
    parts = text.rsplit(":", 2)
    head = parts[0].split(":") if parts else []
    try:
        if len(parts) != 3 or len(head) != 2 or not all(head):
            raise ValueError
        lo, hi = float(parts[1]), float(parts[2])
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo > hi:
            raise ValueError
    except ValueError:
        raise DataError(f"--travel {text!r}: expected CAM_A:CAM_B:MIN_S:MAX_S with MIN <= MAX seconds, "
                        "e.g. gate:lobby:5:60") from None
    return TravelWindow(head[0], head[1], lo, hi)


def cannot_link(tracks: Sequence[Track], travel: Sequence[TravelWindow] = ()) -> np.ndarray:
    """``(N, N)`` bool: pairs that cannot be one person (same camera at overlapping times; two
    cameras with a travel window whose gap falls outside it). The diagonal is False."""
    n = len(tracks)
    cam = np.array([t.camera for t in tracks], dtype=object)
    s = np.array([t.start for t in tracks], np.float64)
    e = np.array([t.end for t in tracks], np.float64)
    overlap = (s[:, None] <= e[None, :]) & (s[None, :] <= e[:, None])
    out = (cam[:, None] == cam[None, :]) & overlap
    # gap from one leaving to the other entering (negative when both are seen at once)
    gap = np.maximum(s[None, :] - e[:, None], s[:, None] - e[None, :])
    for w in travel:
        pair = ((cam[:, None] == w.a) & (cam[None, :] == w.b)) | ((cam[:, None] == w.b) & (cam[None, :] == w.a))
        out |= pair & ((gap < w.lo) | (gap > w.hi))
    out[np.arange(n), np.arange(n)] = False
    return out


def agglomerate(distance: np.ndarray, cannot: np.ndarray, threshold: float) -> np.ndarray:
    """Average-linkage clustering of ``distance (N, N)`` that never merges two clusters holding a
    ``cannot`` pair and stops when the closest allowed pair of clusters is farther than
    ``threshold``. Returns labels ``0..K-1`` in order of each cluster's first member."""
    n = len(distance)
    d = np.array(distance, np.float64, copy=True)
    if d.shape != (n, n) or cannot.shape != (n, n):
        raise ValueError(f"distance {d.shape} and cannot {cannot.shape} must both be (N, N)")
    c = np.array(cannot, bool, copy=True)
    c |= c.T
    size = np.ones(n)
    parent = np.arange(n)
    np.fill_diagonal(d, np.inf)
    d[c] = np.inf
    while n > 1:
        flat = int(np.argmin(d))
        i, j = divmod(flat, n)
        if not d[i, j] <= threshold:
            break
        if i > j:
            i, j = j, i
        # merge j into i (Lance-Williams update for average linkage)
        row = (size[i] * d[i] + size[j] * d[j]) / (size[i] + size[j])
        c[i] |= c[j]
        c[:, i] = c[i]
        row[c[i]] = np.inf
        d[i], d[:, i] = row, row
        d[i, i] = np.inf
        d[j], d[:, j] = np.inf, np.inf
        size[i] += size[j]
        parent[parent == j] = i
    _, labels = np.unique(parent, return_inverse=True)
    first: dict[int, int] = {}
    for lab in labels:
        first.setdefault(int(lab), len(first))
    return np.array([first[int(lab)] for lab in labels], np.int64)


def auto_threshold(distance: np.ndarray, cannot: np.ndarray, quantile: float = 0.05) -> float:
    """A threshold read off the certain negatives: the ``quantile`` of the distances of
    cannot-link pairs (two people for sure), or 0.3 when there are fewer than 10 such pairs."""
    iu = np.triu_indices(len(distance), 1)
    neg = np.asarray(distance)[iu][np.asarray(cannot)[iu]]
    return float(np.quantile(neg, quantile)) if len(neg) >= 10 else 0.3


def link_tracks(tracks: Sequence[Track], vectors: np.ndarray, threshold: float | str = "auto",
                travel: Sequence[TravelWindow] = ()) -> tuple[np.ndarray, float]:
    """Global identity labels of ``tracks`` (unit ``vectors`` one per track) and the threshold
    used. Labels are numbered in order of first appearance (absolute start time)."""
    if len(tracks) == 0:
        return np.zeros(0, np.int64), 0.0
    v = np.asarray(vectors, np.float32)
    dist = np.clip(1.0 - v @ v.T, 0.0, 2.0)
    cannot = cannot_link(tracks, travel)
    thr = auto_threshold(dist, cannot) if threshold == "auto" else float(threshold)
    order = np.argsort([t.start for t in tracks], kind="stable")
    lab = agglomerate(dist[np.ix_(order, order)], cannot[np.ix_(order, order)], thr)
    labels = np.empty(len(tracks), np.int64)
    labels[order] = lab
    return labels, thr


# ------------------------------------------------------------------------------- folders, files
def load_tracks(folders: Sequence[str | os.PathLike]) -> list[Track]:
    """The tracklets of every folder written by ``hareid tracklets``; camera names must be unique
    across folders."""
    from hareid.data.tracklets import load_tracklets_meta

    tracks: list[Track] = []
    owner: dict[str, Path] = {}
    for folder in folders:
        root = Path(folder).expanduser().resolve()
        meta = load_tracklets_meta(root)
        sources = {s["name"]: s for s in meta.get("sources", [])}
        for name in sources:
            if name in owner and owner[name] != root:
                raise DataError(f"camera {name!r} is in both {owner[name]} and {root}; camera names must "
                                "be unique: write the tracklets again with --camera NAME per source")
            owner[name] = root
        for t in meta["tracklets"]:
            cam = t.get("camera", t["source"])
            start0 = float(sources.get(t["source"], {}).get("start_time", 0.0))
            crops = sorted(t["crops"], key=lambda c: c["frame"])
            if not crops:
                continue
            times = [float(c.get("abs_time", start0 + float(c["time"]))) for c in crops]
            tracks.append(Track(t.get("key", f"{cam}/{int(t.get('index', 0)):04d}"), cam, min(times),
                                max(times), tuple((int(c["frame"]), tuple(float(v) for v in c["box"]),
                                                   str(root / c["file"])) for c in crops)))
    if not tracks:
        raise DataError(f"no tracklets in {', '.join(str(f) for f in folders)}; nothing to link")
    return tracks


def track_vectors(tracks: Sequence[Track], embed: Callable[[list[str]], np.ndarray]) -> np.ndarray:
    """One unit vector per track: the re-normalised mean of its crops' unit embeddings;
    ``embed(paths) -> (N, D)``."""
    paths = [p for t in tracks for _, _, p in t.crops]
    keys = [t.key for t in tracks for _ in t.crops]
    order, vecs = mean_unit(embed(paths), keys)
    pos = {k: i for i, k in enumerate(order)}
    return vecs[[pos[t.key] for t in tracks]]


def write_links(out: Path, tracks: Sequence[Track], labels: np.ndarray, info: dict[str, Any]) -> dict:
    """``out/<camera>.txt`` (MOTChallenge ``frame,id,x,y,w,h,conf,-1,-1,-1``; 1-based frames,
    global ids from 1), ``out/identities.json`` (id -> list of camera, tracklet, start, end) and
    ``out/identities.jpg`` (a row per identity seen by several cameras, when there is one)."""
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[tuple[int, int, tuple]]] = {}
    ident: dict[int, list[dict[str, Any]]] = {}
    for t, lab in zip(tracks, labels):
        gid = int(lab) + 1
        ident.setdefault(gid, []).append({"camera": t.camera, "tracklet": t.key, "start": t.start,
                                          "end": t.end})
        for frame, box, _ in t.crops:
            rows.setdefault(t.camera, []).append((frame + 1, gid, box))
    for cam, r in rows.items():
        r.sort(key=lambda x: (x[0], x[1]))
        (out / f"{cam}.txt").write_text("".join(
            f"{f},{g},{b[0]:.2f},{b[1]:.2f},{b[2] - b[0]:.2f},{b[3] - b[1]:.2f},1,-1,-1,-1\n"
            for f, g, b in r))
    doc = {**info, "num_identities": len(ident), "num_tracklets": len(tracks),
           "identities": {str(k): sorted(v, key=lambda x: x["start"]) for k, v in sorted(ident.items())}}
    (out / "identities.json").write_text(json.dumps(doc, indent=1))
    _identity_sheet(out / "identities.jpg", tracks, labels)
    return doc


def _identity_sheet(path: Path, tracks: Sequence[Track], labels: np.ndarray) -> None:
    """identities.jpg: every identity seen by more than one camera, a row each, the middle crop of
    each of its tracklets captioned with camera and time (to check the links by eye)."""
    from hareid.footage.sheet import identity_sheet

    rows = []
    t0 = min(t.start for t in tracks)
    for gid in sorted({int(x) for x in labels}):
        mine = sorted((t for t, lab in zip(tracks, labels) if lab == gid), key=lambda t: t.start)
        if len({t.camera for t in mine}) < 2:
            continue
        rows.append((f"id {gid + 1}", [(t.crops[len(t.crops) // 2][2], f"{t.camera}\n{t.start - t0:.0f} s")
                                       for t in mine if t.crops]))
    if rows:
        identity_sheet(rows, path)


def _index_embed(location: str | os.PathLike) -> Callable[[list[str]], np.ndarray]:
    """Crop vectors stored in an index (by path); a crop not in it is left out of the mean."""
    from hareid.index import open_index

    with open_index(location, read_only=True) as index:
        items = index.items()
        vecs = index.vectors([it.id for it in items])
    by_path = {it.path: i for i, it in enumerate(items)}

    def embed(paths: list[str]) -> np.ndarray:
        out = np.full((len(paths), vecs.shape[1]), np.nan, np.float32)
        for i, p in enumerate(paths):
            j = by_path.get(p)
            if j is not None:
                out[i] = vecs[j]
        return out

    return embed


def _checkpoint_embed(checkpoint: str | os.PathLike, batch_size: int, progress: bool
                      ) -> Callable[[list[str]], np.ndarray]:
    from hareid.index.embedder import load_embedder
    from hareid.progress import progress as progress_bar

    emb = load_embedder(checkpoint)

    def embed(paths: list[str]) -> np.ndarray:
        import torch

        out = []
        with progress_bar(total=len(paths), desc="link: embed crops", unit="img", enabled=progress) as bar:
            for i in range(0, len(paths), batch_size):
                chunk = paths[i:i + batch_size]
                out.append(emb.embed(torch.stack([emb.preprocess(p) for p in chunk])))
                bar.update(len(chunk))
        return np.concatenate(out) if out else np.zeros((0, emb.dim), np.float32)

    return embed


def link_folders(folders: Sequence[str | os.PathLike], out: str | os.PathLike, *,
                 checkpoint: str | os.PathLike | None = None, index: str | os.PathLike | None = None,
                 embed: Callable[[list[str]], np.ndarray] | None = None,
                 threshold: float | str = "auto", travel: Sequence[str] = (), batch_size: int = 64,
                 overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Link the tracklets of ``folders`` across cameras and write ``out`` (see :func:`write_links`).

    Embeddings come from ``checkpoint``, or from the crop vectors of ``index`` (built by ``hareid
    index`` on these folders; per-tracklet indexes work too), or from ``embed(paths)``. The output
    folder is written beside itself and renamed into place: nothing is left behind on an error.
    """
    from hareid.footage.extract import prepare_output

    if sum(x is not None for x in (checkpoint, index, embed)) != 1:
        raise HareidError("give exactly one of --checkpoint CKPT or --index IDX for the embeddings")
    windows = [parse_travel(t) for t in travel]
    if threshold != "auto":
        try:
            threshold = float(threshold)
        except ValueError:
            raise DataError(f"--threshold {threshold!r}: expected a cosine distance (0-2) or auto") from None
    tracks = load_tracks(folders)
    cams = {t.camera for t in tracks}
    for w in windows:
        for c in (w.a, w.b):
            if c not in cams:
                raise DataError(f"--travel {w.a}:{w.b}: no camera {c!r} in these tracklets "
                                f"(cameras: {', '.join(sorted(cams))})")
    out_p = Path(out).expanduser().absolute()
    for f in folders:
        root = Path(f).expanduser().resolve()
        o = out_p.resolve()
        if o == root or root in o.parents or o in root.parents:
            raise HareidError(f"{out_p}: overlaps the input {root}; pick an --out outside the tracklets folders")
    out_p = prepare_output(out_p, overwrite)
    if embed is None:
        embed = _index_embed(index) if index is not None else _checkpoint_embed(checkpoint, batch_size, progress)
    feats = np.asarray(embed([p for t in tracks for _, _, p in t.crops]), np.float32)
    keys = [t.key for t in tracks for _ in t.crops]
    have = np.isfinite(feats).all(axis=1)
    order, vecs = mean_unit(feats[have], [k for k, h in zip(keys, have) if h])
    missing = sorted({t.key for t in tracks} - set(order))
    if missing:
        raise DataError(f"{index}: no vector for the crops of {len(missing)} tracklets (e.g. {missing[0]}); "
                        f"index the tracklets folders first: hareid index CKPT FOLDER --out {index}")
    pos = {k: i for i, k in enumerate(order)}
    labels, thr = link_tracks(tracks, vecs[[pos[t.key] for t in tracks]], threshold, windows)
    info = {"format": "hareid-links", "folders": [str(Path(f).resolve()) for f in folders],
            "embeddings": str(checkpoint or index or "given"), "threshold": thr,
            "threshold_from": "auto (5% quantile of cannot-link distances)" if threshold == "auto" else "given",
            "travel": [w.__dict__ for w in windows], "cameras": sorted(cams)}
    with atomic_folder(out_p) as tmp:
        doc = write_links(tmp, tracks, labels, info)
    return doc
