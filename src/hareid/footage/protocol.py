"""The label-free re-identification protocol on real footage, and what it compares.

Evidence of *re-identification*, not of tracking (docs/evaluation.md, "Footage without labels"):

* a query is a crop from the first part of a tracklet; its positives are crops of the LAST part of
  the same tracklet, at least ``gap`` seconds later (default 2 s): the person has moved, so
  position in the frame, scale, pose, lighting and the background behind them differ; crops in
  between are not used (:func:`hareid.data.tracklets.split_tracklet`);
* negatives come in two variants:

  - ``all``: every other tracklet. Some may be the same person (a tracklet broken by an occlusion,
    or a person who leaves and comes back): counted as errors, so scores are a *lower bound*;
  - ``cooccurring``: only tracklets seen in the same frame as the query's tracklet at least once;
    one person cannot be in two places at once, so these are *certainly* other people. Other
    tracklets are left out (junk). Fewer negatives: a higher chance level, shown beside it.

Scores are Rank-1 and mAP from the project's one metric function
(:func:`hareid.evaluate.evaluate_rank`, Market-1501 rule with a junk group in the camera slot); the
``cooccurring`` variant removes the other tracklets by giving them a distance larger than any
other, which for CMC, AP and mINP is the same as removing them (tested). 95 % intervals are a
bootstrap over query tracklets (queries of one tracklet are not independent).

Compared: a colour-histogram baseline (:func:`colour_histogram`), a randomly initialised HA-CNN,
and any checkpoint (hareid or torchreid). :func:`evaluate_footage` runs them all on one tracklets
folder; ``benchmarks/bench_footage.py`` is the script around it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hareid.data.records import ImageRecord, ReIDDataset
from hareid.errors import DataError
from hareid.progress import progress as progress_bar

__all__ = [
    "VARIANTS",
    "FootageResult",
    "colour_histogram",
    "embed_crops",
    "evaluate_features",
    "evaluate_footage",
    "footage_table",
    "paired_difference",
    "protocol_stats",
    "random_hacnn",
]

VARIANTS = ("all", "cooccurring")
PathLike = str | os.PathLike


# --------------------------------------------------------------------------------------- features
def colour_histogram(paths: Sequence[PathLike], stripes: int = 6, bins: tuple[int, int, int] = (8, 4, 4),
                     masks: Sequence[PathLike | None] | None = None) -> np.ndarray:
    """HSV colour histograms of horizontal stripes (head to feet), square-rooted (Hellinger) and
    L2-normalised -> ``(N, stripes * prod(bins))`` float32. ``masks``: count only foreground pixels."""
    from PIL import Image

    out = []
    edges = [np.linspace(0, 256, b + 1) for b in bins]
    for i, p in enumerate(paths):
        with Image.open(p) as im:
            hsv = np.asarray(im.convert("RGB").convert("HSV"), dtype=np.float64)  # (H, W, 3) 0..255
        keep = np.ones(hsv.shape[:2], bool)
        if masks is not None and masks[i] is not None:
            with Image.open(masks[i]) as m:
                keep = np.asarray(m.convert("L").resize((hsv.shape[1], hsv.shape[0]))) > 127
        feats = []
        for rows in np.array_split(np.arange(hsv.shape[0]), stripes):
            px = hsv[rows][keep[rows]]  # (n, 3)
            h, _ = np.histogramdd(px, bins=edges)
            h = h.ravel()
            feats.append(np.sqrt(h / max(h.sum(), 1.0)))
        f = np.concatenate(feats)
        out.append(f / max(np.linalg.norm(f), 1e-12))
    return np.asarray(out, dtype=np.float32)


def random_hacnn(seed: int = 0) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A randomly initialised HA-CNN (160x64), in eval mode, with the ``info`` dict of ``load_model``."""
    from hareid.models import build_model

    g = torch.random.fork_rng()
    with g:
        torch.manual_seed(seed)
        model = build_model("hacnn", num_classes=1)
    return model.eval(), {"height": 160, "width": 64, "config": {}, "path": f"random-init(seed={seed})"}


def embed_crops(model: torch.nn.Module, info: Mapping[str, Any], paths: Sequence[PathLike],
                batch_size: int = 64) -> np.ndarray:
    """Unit-length embeddings ``(N, D)`` float32 of image files, through :class:`hareid.Embedder`
    (the same preprocessing and embedding function as evaluation)."""
    from hareid.deploy.embedder import Embedder

    was_training = model.training
    try:
        return Embedder(model, info=dict(info), batch_size=batch_size, dtype=None).embed(  # float32: scores
            [str(p) for p in paths])
    finally:
        model.train(was_training)


# ------------------------------------------------------------------------------------- evaluation
@dataclass
class FootageResult:
    """One model under one protocol variant (fractions in [0, 1])."""

    model: str
    variant: str
    rank1: float
    mAP: float
    mINP: float
    rank1_ci: tuple[float, float]
    mAP_ci: tuple[float, float]
    chance_rank1: float
    num_query: int
    num_query_tracklets: int
    num_gallery: int
    per_query: dict[str, list] = field(default_factory=dict, repr=False)  # tracklet, hit, ap per valid query

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired_difference(a: FootageResult, b: FootageResult, metric: str = "ap", n: int = 1000,
                      seed: int = 0) -> tuple[float, float, float]:
    """``b - a`` in mAP (``metric="ap"``) or Rank-1 (``"hit"``) on the same queries, with a 95 %
    interval from one bootstrap over query tracklets applied to both (paired, so the spread of
    query difficulty cancels). Returns ``(difference, low, high)``."""
    if a.per_query.get("tracklet") != b.per_query.get("tracklet") or a.variant != b.variant:
        raise ValueError("paired_difference needs two results on the same queries and variant")
    groups = np.asarray(a.per_query["tracklet"])
    diff = np.asarray(b.per_query[metric], float) - np.asarray(a.per_query[metric], float)
    lo, hi = _bootstrap(diff, groups, n, seed)
    return float(diff.mean()), lo, hi


def _groups(records: Sequence[ImageRecord], ds: ReIDDataset) -> list[str]:
    meta = ds.extras["crop_meta"]
    return [meta[r.path]["tracklet"] for r in records]


def cooccurrence_junk(ds: ReIDDataset) -> np.ndarray:
    """``(Q, G)`` bool: gallery crops that are neither the query's identity nor of a tracklet seen in
    the same frame as the query's tracklet (the ``cooccurring`` variant leaves them out)."""
    frames = ds.extras["tracklet_frames"]
    qg, gg = _groups(ds.query, ds), _groups(ds.gallery, ds)
    keys = sorted(frames)
    index = {k: i for i, k in enumerate(keys)}
    co = np.zeros((len(keys), len(keys)), bool)  # (T, T) seen together in at least one frame
    for i, a in enumerate(keys):
        sa, fa = frames[a]
        for j in range(i + 1, len(keys)):
            sb, fb = frames[keys[j]]
            if sa == sb and not fa.isdisjoint(fb):
                co[i, j] = co[j, i] = True
    qi = np.array([index[k] for k in qg])
    gi = np.array([index[k] for k in gg])
    same_pid = np.array([r.pid for r in ds.query])[:, None] == np.array([r.pid for r in ds.gallery])[None, :]
    return ~co[qi][:, gi] & ~same_pid


def _per_query(distmat: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray, q_cams: np.ndarray,
               g_cams: np.ndarray, junk: np.ndarray | None) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
    """The RankResult, and per query: rank-1 hit, AP (0 where not valid), chance of a rank-1 hit."""
    from hareid.evaluate import evaluate_rank

    d = distmat.astype(np.float64, copy=True)
    excluded = (q_pids[:, None] == g_pids[None, :]) & (q_cams[:, None] == g_cams[None, :])
    if junk is not None:
        excluded |= junk
        d[junk] = d.max() + 1.0 + np.abs(d).max()  # after everything: the same as removing them
    res = evaluate_rank(d, q_pids, g_pids, q_cams, g_cams, max_rank=max(1, d.shape[1]))
    match = (q_pids[:, None] == g_pids[None, :]) & ~excluded
    valid = res.valid
    d_kept = np.where(excluded, np.inf, d)
    hit = match[np.arange(len(d)), d_kept.argmin(axis=1)]
    chance = match.sum(1) / np.maximum((~excluded).sum(1), 1)
    ap = np.zeros(len(d))
    ap[valid] = res.ap
    return res, hit.astype(float), ap, chance


def _bootstrap(values: np.ndarray, groups: np.ndarray, n: int, seed: int) -> tuple[float, float]:
    """95 % interval of the mean of ``values`` resampling whole groups (tracklets)."""
    uniq = np.unique(groups)
    if len(uniq) < 2 or n <= 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    sums = np.array([values[groups == g].sum() for g in uniq])
    counts = np.array([(groups == g).sum() for g in uniq])
    draws = rng.integers(0, len(uniq), size=(n, len(uniq)))
    means = sums[draws].sum(1) / counts[draws].sum(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def evaluate_features(ds: ReIDDataset, qf: np.ndarray, gf: np.ndarray, model: str = "model",
                      variant: str = "all", bootstrap: int = 1000, seed: int = 0) -> FootageResult:
    """Score query/gallery features of a ``tracklets`` dataset under one protocol variant."""
    from hareid.evaluate import pairwise_distance

    if variant not in VARIANTS:
        raise DataError(f"unknown protocol variant {variant!r}; choose {' or '.join(VARIANTS)}")
    q_pids = np.array([r.pid for r in ds.query])
    g_pids = np.array([r.pid for r in ds.gallery])
    q_cams = np.array([r.camid for r in ds.query])
    g_cams = np.array([r.camid for r in ds.gallery])
    distmat = pairwise_distance(torch.as_tensor(qf), torch.as_tensor(gf), "euclidean")
    junk = cooccurrence_junk(ds) if variant == "cooccurring" else None
    res, hit, ap, chance = _per_query(np.asarray(distmat), q_pids, g_pids, q_cams, g_cams, junk)
    valid = res.valid
    groups = np.array(_groups(ds.query, ds))[valid]
    return FootageResult(
        model=model, variant=variant, rank1=float(hit[valid].mean()), mAP=float(res.mAP),
        mINP=float(res.mINP),
        rank1_ci=_bootstrap(hit[valid], groups, bootstrap, seed),
        mAP_ci=_bootstrap(ap[valid], groups, bootstrap, seed),
        chance_rank1=float(chance[valid].mean()), num_query=int(valid.sum()),
        num_query_tracklets=len(set(groups.tolist())), num_gallery=len(ds.gallery),
        per_query={"tracklet": groups.tolist(), "hit": hit[valid].tolist(), "ap": ap[valid].tolist()})


def protocol_stats(ds: ReIDDataset) -> dict[str, float]:
    """How far positives are from their queries: time gap (s), displacement of the box centre (in
    box heights) and scale change (ratio of box heights, >= 1), medians over query/positive pairs."""
    meta = ds.extras["crop_meta"]
    gaps, moves, scales = [], [], []
    by_pid: dict[int, list[ImageRecord]] = {}
    for r in ds.gallery:
        by_pid.setdefault(r.pid, []).append(r)
    for q in ds.query:
        mq = meta[q.path]
        bq = np.asarray(mq["box"], float)
        for g in by_pid.get(q.pid, []):
            if g.camid == q.camid:
                continue
            mg = meta[g.path]
            bg = np.asarray(mg["box"], float)
            hq, hg = bq[3] - bq[1], bg[3] - bg[1]
            gaps.append(abs(mg["time"] - mq["time"]))
            cq, cg = (bq[:2] + bq[2:]) / 2, (bg[:2] + bg[2:]) / 2
            moves.append(float(np.linalg.norm(cq - cg) / max((hq + hg) / 2, 1.0)))
            scales.append(max(hq, hg) / max(min(hq, hg), 1.0))
    if not gaps:
        return {}
    return {"pairs": len(gaps), "median_gap_s": float(np.median(gaps)),
            "median_displacement_box_heights": float(np.median(moves)),
            "median_scale_ratio": float(np.median(scales))}


def _load(spec: Any) -> tuple[str, Any]:
    """``"hist"``, ``"random"``, a checkpoint path, a ready ``(model, info)`` pair, or a function
    ``paths -> (N, D) features`` (another embedder, e.g. a tracker's stock one)."""
    if isinstance(spec, tuple):
        return "model", spec
    if callable(spec):
        return "fn", spec
    if spec in ("hist", "histogram"):
        return "fn", colour_histogram
    if spec == "random":
        return "model", random_hacnn()
    from hareid.models.loading import load_model

    return "model", load_model(spec)


def evaluate_footage(root: PathLike | ReIDDataset, models: Mapping[str, Any],
                     variants: Sequence[str] = VARIANTS, gap: float = 2.0, bootstrap: int = 1000,
                     seed: int = 0, progress: bool = True) -> list[FootageResult]:
    """Every model of ``models`` (name -> ``"hist"``, ``"random"``, checkpoint path, ``(model,
    info)`` or a function ``paths -> features``) on a tracklets folder under each protocol variant."""
    from hareid.data import build_dataset

    ds = root if isinstance(root, ReIDDataset) else build_dataset("tracklets", root, verbose=False, gap=gap)
    q_paths, g_paths = [r.path for r in ds.query], [r.path for r in ds.gallery]
    rows = []
    for name, spec in progress_bar(list(models.items()), desc="models", enabled=progress, leave=False):
        kind, loaded = _load(spec)
        if kind == "fn":
            qf, gf = loaded(q_paths), loaded(g_paths)
        else:
            model, info = loaded
            qf, gf = embed_crops(model, info, q_paths), embed_crops(model, info, g_paths)
        rows += [evaluate_features(ds, qf, gf, name, v, bootstrap, seed) for v in variants]
    return rows


def footage_table(rows: Sequence[FootageResult]) -> str:
    """A markdown table: one line per model and variant, with intervals and chance."""
    lines = ["| model | negatives | Rank-1 (%) | 95 % CI | mAP (%) | 95 % CI | chance Rank-1 (%) | queries (tracklets) |",
             "|---|---|---:|---|---:|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.model} | {r.variant} | {100 * r.rank1:.1f} | {100 * r.rank1_ci[0]:.0f}-{100 * r.rank1_ci[1]:.0f} "
                     f"| {100 * r.mAP:.1f} | {100 * r.mAP_ci[0]:.0f}-{100 * r.mAP_ci[1]:.0f} "
                     f"| {100 * r.chance_rank1:.1f} | {r.num_query} ({r.num_query_tracklets}) |")
    return "\n".join(lines)


def crops_of(root: PathLike) -> list[str]:
    """Every crop file of a tracklets folder (convenience for issue-14 style scoring)."""
    from hareid.data.tracklets import load_tracklets_meta

    root = Path(root)
    return [str(root / c["file"]) for t in load_tracklets_meta(root)["tracklets"] for c in t["crops"]]
