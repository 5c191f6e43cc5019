"""Label-free adaptation to new footage: tracklets as pseudo-identities, trained with the
:class:`~hareid.engine.Trainer`.

``adapt(CKPT, FOOTAGE, RUN)``:

1. **Tracklets**: FOOTAGE is a ``tracklets`` folder, or footage (video, frames, MOT) turned into
   one under ``RUN/tracklets`` (:func:`hareid.footage.extract_tracklets`). The footage is only read.
2. **Held-out time** (``adapt.holdout``, default the last 20 % of each source's frames): tracklets
   that start after that point are kept out of training and give the label-free validation
   (the time-gap protocol, ``cooccurring`` negatives; :mod:`hareid.footage.protocol`); tracklets
   that straddle the point are dropped. ``best.pt`` is the epoch with the highest validation mAP,
   so no label is used anywhere. With ``adapt.holdout=0`` (or too few long held-out tracklets)
   ``best.pt`` is the last epoch.
3. **Pseudo-identities**: one per training tracklet with at least ``adapt.min_crops`` crops.
   With several cameras (``adapt.camera_aware``, default on) a tracklet is told apart only from
   tracklets of its own camera (:class:`~hareid.engine.losses.ReIDLoss` ``compete``): the same
   person seen by two cameras is two tracklets, and pushing them apart would teach the model
   to tell cameras apart rather than people.
   Optionally (``adapt.merge=true``) tracklets of one person (re-entries, tracks broken by
   occlusion) are merged by average-linkage clustering of the starting model's tracklet
   embeddings, never merging two tracklets seen in the same frame, up to a distance threshold
   read off those certain negatives (their ``adapt.merge_quantile`` quantile).
4. **Batches** (:class:`TrackletSampler`): P pseudo-identities x K crops. The P identities are an
   anchor plus tracklets seen in the same frames (certain negatives for the triplet loss) and,
   when those run out, tracklets far from the anchor in time (not its likely fragments); the K
   crops of an identity are drawn from K equal time slices of it (positives far apart in time).
5. **Training**: the checkpoint's weights, new classifiers sized to the pseudo-identities,
   the ``hacnn_adapt`` recipe (cross-entropy with label smoothing + batch-hard triplet, Adam
   3.5e-4, cosine, 8 epochs), through ``Trainer(cfg, model=..., dataset=..., loaders=...,
   eval_fn=..., num_classes=..., model_spec=...)``. The run folder is a normal one:
   ``RUN/checkpoints/best.pt`` works with every command; ``RUN/adapt.json`` records the footage,
   tracklet counts, merges, the validation before adaptation (epoch 0) and the chosen epoch.

Options are ``adapt.*`` keys next to the usual config overrides (``train.epochs=5 adapt.merge=true``).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from hareid.data.records import ImageRecord, ReIDDataset
from hareid.errors import CheckpointError, ConfigError, DataError
from hareid.fileio import atomic_write_text, ensure_disjoint

__all__ = ["AdaptOptions", "TrackletSampler", "adapt", "init_model", "merge_tracklets",
           "recompute_batchnorm", "run_summary", "split_overrides", "time_split"]


@dataclass
class AdaptOptions:
    """The ``adapt.*`` keys (see module docstring)."""

    holdout: float = 0.2  # last share of each source's time held out for label-free validation
    val_gap: float = 1.0  # seconds between query and positive crops in the validation protocol
    merge: bool = False  # merge tracklets of one person by clustering before training
    merge_quantile: float = 0.02  # merge threshold: this quantile of certain-negative distances
    sampler: str = "cooccur"  # cooccur (tracklets seen together in a batch) | random
    spread: bool = True  # K crops of a tracklet from K time slices
    min_crops: int = 4  # shorter tracklets are not trained on
    iters_per_epoch: int = 0  # 0 = number of training crops / batch size
    camera_aware: bool = True  # several cameras: a tracklet is told apart only from its own camera's


def split_overrides(items: Sequence[str]) -> tuple[list[str], AdaptOptions]:
    """Separate ``adapt.key=value`` items from config overrides and parse them."""
    rest, opts = [], AdaptOptions()
    fields = {f.name: f for f in dataclasses.fields(AdaptOptions)}
    for item in items:
        if not item.startswith("adapt."):
            rest.append(item)
            continue
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. adapt.merge=true")
        key, raw = item[len("adapt."):].split("=", 1)
        if key not in fields:
            near = difflib.get_close_matches(key, fields, n=1)
            hint = f" (did you mean adapt.{near[0]}?)" if near else ""
            raise ConfigError(f"unknown key adapt.{key}{hint}; valid: {', '.join('adapt.' + f for f in fields)}")
        default = getattr(opts, key)
        try:
            if isinstance(default, bool):
                if raw.lower() not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                    raise ValueError
                value: Any = raw.lower() in ("true", "1", "yes", "on")
            else:
                value = type(default)(raw)
        except ValueError:
            raise ConfigError(f"adapt.{key}={raw!r}: expected {type(default).__name__}") from None
        setattr(opts, key, value)
    if not 0 <= opts.holdout < 1:
        raise ConfigError(f"adapt.holdout={opts.holdout}: expected a share in [0, 1)")
    if opts.sampler not in ("cooccur", "random"):
        raise ConfigError(f"adapt.sampler={opts.sampler!r}: choose cooccur or random")
    return rest, opts


# ------------------------------------------------------------------------------------ the model
def init_model(checkpoint: str | os.PathLike, num_classes: int, ckpt: Mapping[str, Any] | None = None,
               ) -> tuple[torch.nn.Module, dict[str, Any], dict[str, Any]]:
    """The checkpoint's network with fresh classifiers for ``num_classes`` pseudo-identities and
    ``return_features=True``; returns ``(model, model_spec, info)``. Every weight but the
    classifiers must load (CheckpointError naming the keys otherwise). ``ckpt``: the checkpoint
    already read (``load_checkpoint(checkpoint)``), so the file is not read again."""
    from hareid.checkpoint import load_checkpoint, strip_prefix
    from hareid.models import build_model
    from hareid.models.loading import model_from_checkpoint

    ckpt = load_checkpoint(checkpoint) if ckpt is None else ckpt
    _, info = model_from_checkpoint(ckpt, checkpoint)  # validates the file and the architecture
    spec = dict(info["model"])
    if spec.get("source") == "torchreid":
        from hareid.models.torchreid_compat import load_torchreid_hacnn

        model = load_torchreid_hacnn(ckpt, num_classes=num_classes)
        model.return_features = True
        spec = {"name": "hacnn", "num_classes": num_classes, "num_regions": model.num_regions,
                "feature_dim": model.feature_dim, "local_branch": model.local_branch,
                "region_sampling": model.region_sampling, "return_features": True,
                "channels": tuple(int(a.soft.conv.conv.weight.shape[0]) for a in model.attn)}
        return model.train(), spec, info
    name = spec.pop("name")
    spec.pop("num_classes", None)
    spec["return_features"] = True
    model = build_model(name, num_classes=num_classes, **spec)
    state = strip_prefix(ckpt["state_dict"])
    target = model.state_dict()
    fresh = {k for k in target if k.startswith("classifier")}
    bad = sorted(k for k in target if k not in fresh and (k not in state or state[k].shape != target[k].shape))
    if bad:
        raise CheckpointError(f"{checkpoint}: weights do not fit model {name!r} ({bad[:4]}); "
                              "pass a checkpoint of this model")
    model.load_state_dict({k: v for k, v in state.items() if k in target and k not in fresh}, strict=False)
    return model.train(), {"name": name, "num_classes": num_classes, **spec}, info


@torch.no_grad()
def recompute_batchnorm(model: torch.nn.Module, paths: Sequence[str | os.PathLike], height: int,
                        width: int, batch_size: int = 64, seed: int = 0,
                        mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> torch.nn.Module:
    """AdaBN (Li et al. 2016): re-estimate every BatchNorm's running mean and variance on the target
    crops (no gradient, no label), the cheapest form of domain adaptation; returns the model in eval
    mode. Crops are seen once, in a fixed random order, with the evaluation transform."""
    from hareid.data.loader import read_image
    from hareid.data.transforms import build_transforms
    from hareid.evaluate.features import model_device

    tf = build_transforms(height, width, **{k: v for k, v in (("mean", mean), ("std", std)) if v})[1]
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
    device = model_device(model)
    order = np.random.default_rng(seed).permutation(len(paths))
    model.train()
    try:
        for i in range(0, len(order), batch_size):
            chunk = [paths[j] for j in order[i:i + batch_size]]
            if len(chunk) < 2:
                continue  # BatchNorm needs two samples
            x = torch.stack([tf(read_image(str(p))) for p in chunk]).to(device)  # (B, 3, H, W)
            model(x)
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom
    return model.eval()


# ------------------------------------------------------------------------------------- tracklets
def time_split(meta: Mapping[str, Any], holdout: float) -> tuple[list[str], list[str], int]:
    """Tracklet ids ending before / starting after the held-out point of each source (the last
    ``holdout`` share of its frames), and the number straddling it (dropped)."""
    span: dict[str, tuple[int, int]] = {}
    for t in meta["tracklets"]:
        lo, hi = span.get(t["source"], (t["first_frame"], t["last_frame"]))
        span[t["source"]] = (min(lo, t["first_frame"]), max(hi, t["last_frame"]))
    for s in meta.get("sources", []):
        if s["name"] in span and s.get("stop") is not None:
            span[s["name"]] = (int(s.get("start") or 0), int(s["stop"]) - 1)
    train, val, straddle = [], [], 0
    for t in meta["tracklets"]:
        lo, hi = span[t["source"]]
        cut = hi + 1 if holdout <= 0 else lo + (1 - holdout) * (hi + 1 - lo)
        if t["last_frame"] < cut:
            train.append(str(t["id"]))
        elif t["first_frame"] >= cut:
            val.append(str(t["id"]))
        else:
            straddle += 1
    return train, val, straddle


def _cooccur_matrix(frames: Sequence[tuple[str, frozenset[int]]]) -> np.ndarray:
    n = len(frames)
    co = np.zeros((n, n), bool)
    for i in range(n):
        for j in range(i + 1, n):
            if frames[i][0] == frames[j][0] and not frames[i][1].isdisjoint(frames[j][1]):
                co[i, j] = co[j, i] = True
    return co


def merge_tracklets(features: np.ndarray, cannot_link: np.ndarray, quantile: float = 0.02
                    ) -> tuple[np.ndarray, float]:
    """Average-linkage clustering of unit tracklet embeddings ``(T, D)`` with cannot-link pairs
    ``(T, T)``; merging stops at the ``quantile`` of the cannot-link (certain negative) pairs'
    cosine distances. Returns labels ``(T,)`` (0..C-1) and the threshold (``nan``: no negatives,
    nothing merged)."""
    t = len(features)
    labels = np.arange(t)
    neg = (1.0 - features @ features.T)[np.triu(cannot_link, 1)]
    if t < 2 or neg.size == 0:
        return labels, float("nan")
    thr = float(np.quantile(neg, quantile))
    dist = (1.0 - features @ features.T).astype(np.float64)
    np.fill_diagonal(dist, np.inf)
    block = cannot_link.copy()
    size = np.ones(t)
    alive = np.ones(t, bool)
    while True:
        d = np.where(block | ~alive[:, None] | ~alive[None, :], np.inf, dist)
        i, j = np.unravel_index(np.argmin(d), d.shape)
        if not np.isfinite(d[i, j]) or d[i, j] >= thr:
            break
        i, j = min(i, j), max(i, j)  # merge j into i (Lance-Williams update for average linkage)
        dist[i] = dist[:, i] = (size[i] * dist[i] + size[j] * dist[j]) / (size[i] + size[j])
        dist[i, i] = np.inf
        block[i] = block[:, i] = block[i] | block[j]
        size[i] += size[j]
        alive[j] = False
        labels[labels == j] = i
    _, labels = np.unique(labels, return_inverse=True)
    return labels, thr


class TrackletSampler(Sampler[int]):
    """P pseudo-identities x K crops per batch (see module docstring), deterministic in (seed, epoch).

    Args:
        labels: pseudo-identity of each record.
        times: time (s) of each record.
        cooccur: ``(L, L)`` bool, identities seen in the same frame.
        spans: per identity ``(source, first time, last time)`` of each of its tracklets.
    """

    def __init__(self, labels: Sequence[int], times: Sequence[float], cooccur: np.ndarray,
                 spans: Sequence[Sequence[tuple[str, float, float]]], batch_size: int,
                 num_instances: int, seed: int = 0, mode: str = "cooccur", spread: bool = True,
                 num_batches: int = 0, far_s: float = 5.0) -> None:
        if batch_size % num_instances:
            raise DataError(f"batch_size {batch_size} must be a multiple of num_instances {num_instances}")
        self.k, self.p, self.batch_size = num_instances, batch_size // num_instances, batch_size
        labels = np.asarray(labels)
        order = np.argsort(np.asarray(times), kind="stable")
        self.members = [order[labels[order] == c] for c in range(int(labels.max()) + 1)]  # time-sorted
        if len(self.members) < 2:
            raise DataError("adaptation needs at least 2 pseudo-identities (tracklets); use longer footage")
        self.p = min(self.p, len(self.members))
        self.cooccur, self.spans = cooccur, spans
        self.mode, self.spread, self.seed, self.epoch, self.far_s = mode, spread, int(seed), 0, far_s
        self.num_batches = num_batches or max(1, len(labels) // batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_batches * self.p * self.k

    def _far(self, a: int, b: int) -> bool:
        """No tracklet of ``b`` within ``far_s`` seconds of one of ``a`` (not a likely fragment)."""
        for sa, a0, a1 in self.spans[a]:
            for sb, b0, b1 in self.spans[b]:
                if sa == sb and b0 - a1 < self.far_s and a0 - b1 < self.far_s:
                    return False
        return True

    def _crops(self, rng: np.random.Generator, c: int) -> np.ndarray:
        m = self.members[c]
        if self.spread and len(m) >= self.k:
            return np.array([rng.choice(part) for part in np.array_split(m, self.k)])
        return rng.choice(m, self.k, replace=len(m) < self.k)

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        n = len(self.members)
        for _ in range(self.num_batches):
            anchor = int(rng.integers(n))
            chosen = [anchor]
            if self.mode == "cooccur":
                together = rng.permutation(np.flatnonzero(self.cooccur[anchor]))
                chosen += [int(c) for c in together[: self.p - 1]]
                if len(chosen) < self.p:
                    far = [c for c in rng.permutation(n) if c not in chosen
                           and all(self._far(x, int(c)) for x in chosen)]
                    chosen += [int(c) for c in far[: self.p - len(chosen)]]
            if len(chosen) < self.p:
                rest = [int(c) for c in rng.permutation(n) if c not in chosen]
                chosen += rest[: self.p - len(chosen)]
            for c in chosen:
                yield from (int(i) for i in self._crops(rng, c))


# ---------------------------------------------------------------------------------------- adapt
def _resolve_tracklets(footage: Sequence[str | os.PathLike], run: Path, extract_cfg: Any,
                       progress: bool) -> Path:
    from hareid.data.tracklets import is_tracklets_folder

    if len(footage) == 1 and is_tracklets_folder(footage[0]):
        return Path(footage[0]).expanduser().resolve()
    if any(is_tracklets_folder(f) for f in footage):
        raise DataError("pass either one tracklets folder or footage (videos, frame folders, MOT "
                        "sequences), not both")
    from hareid.footage import extract_tracklets

    out = run / "tracklets"
    extract_tracklets(footage, out, extract_cfg, overwrite=True, progress=progress)
    return out


def _validation(root: Path, ids: list[str], gap: float) -> ReIDDataset | None:
    from hareid.data.tracklets import parse_tracklets

    if not ids:
        return None
    try:
        return parse_tracklets(root, gap=gap, tracklets=set(ids))
    except DataError:
        return None  # no held-out tracklet long enough to query


def _eval_fn(val: ReIDDataset | None, monitor: Any = None, log: list | None = None):
    """The Trainer's evaluation: the label-free validation; ``monitor(model) -> dict`` (e.g. a
    benchmark's test score) is called too and its result kept in ``log``, never used to choose."""
    from hareid.evaluate import extract_features
    from hareid.footage.protocol import evaluate_features

    def run(model: torch.nn.Module, q_loader: Any, g_loader: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if val is not None:
            qf = extract_features(model, q_loader, progress=False).features.numpy()
            gf = extract_features(model, g_loader, progress=False).features.numpy()
            qf /= np.maximum(np.linalg.norm(qf, axis=1, keepdims=True), 1e-12)
            gf /= np.maximum(np.linalg.norm(gf, axis=1, keepdims=True), 1e-12)
            r = evaluate_features(val, qf, gf, "val", "cooccurring", bootstrap=0)
            out = {"rank1": r.rank1, "mAP": r.mAP, "mINP": r.mINP, "num_query": r.num_query}
        if monitor is not None and log is not None:
            log.append({"validation": dict(out), "monitor": monitor(model)})
        return out

    return run


@dataclass
class _PseudoIds:
    """The training side of adaptation: one pseudo-identity per kept tracklet (or merged group)."""

    kept: list[str]  # tracklet ids trained on
    labels: np.ndarray  # (len(kept),) pseudo-identity of each
    records: list[ImageRecord]  # their crops
    times: list[float]  # per crop: seconds
    rec_labels: list[int]  # per crop: pseudo-identity
    cooccur: np.ndarray  # (num_ids, num_ids) bool: seen in the same frames (certainly different people)
    spans: list[list[tuple[str, float, float]]]  # per identity: (source, first, last time) of its tracklets
    merge: dict[str, Any]  # what adapt.merge did

    @property
    def num_ids(self) -> int:
        return int(self.labels.max()) + 1

    def compete(self) -> np.ndarray | None:
        """``(num_ids, num_ids)`` bool: pseudo-identities that share a camera (source), the only ones
        training tells apart; ``None`` when all come from one camera (then all compete)."""
        cams = [{s for s, _, _ in spans} for spans in self.spans]
        if len(set().union(*cams)) < 2:
            return None
        return np.array([[bool(a & b) for b in cams] for a in cams])


def _cfg_overrides(overrides: Sequence[str]) -> tuple[list[str], AdaptOptions]:
    """Config overrides and adapt.* options; a 1-epoch run gets no warmup (the recipe's needs 2+)."""
    cfg_overrides, opts = split_overrides(overrides)
    epochs = [o.split("=", 1)[1] for o in cfg_overrides if o.startswith("train.epochs=")]
    if epochs and epochs[-1].isdigit() and int(epochs[-1]) <= 1 and not any(
            o.startswith("optim.warmup_epochs=") for o in cfg_overrides):
        cfg_overrides.append("optim.warmup_epochs=0")
    return cfg_overrides, opts


def _pseudo_identities(meta: Mapping[str, Any], train_ids: list[str], root: Path, opts: AdaptOptions,
                       source: torch.nn.Module, info: dict[str, Any]) -> _PseudoIds:
    """Training records: one pseudo-identity per tracklet, or per group of tracklets merged by
    clustering their embeddings under ``source`` (``adapt.merge``), never two seen at once."""
    by_id = {str(t["id"]): t for t in meta["tracklets"]}
    kept = [i for i in train_ids if len(by_id[i]["crops"]) >= opts.min_crops]
    if len(kept) < 2:
        raise DataError(f"{root}: only {len(kept)} training tracklets with >= {opts.min_crops} crops "
                        f"before the held-out {100 * opts.holdout:.0f} %; use longer footage or adapt.holdout=0")
    t_frames = [(by_id[i]["source"], frozenset(int(c["frame"]) for c in by_id[i]["crops"])) for i in kept]
    co = _cooccur_matrix(t_frames)
    labels = np.arange(len(kept))
    merge_info: dict[str, Any] = {"enabled": opts.merge}
    if opts.merge:
        from hareid.footage.protocol import embed_crops

        feats = []
        for i in kept:
            f = embed_crops(source, info, [str(root / c["file"]) for c in by_id[i]["crops"]]).mean(0)
            feats.append(f / max(np.linalg.norm(f), 1e-12))
        labels, thr = merge_tracklets(np.stack(feats), co, opts.merge_quantile)
        groups = [[kept[j] for j in np.flatnonzero(labels == g)] for g in range(int(labels.max()) + 1)]
        merge_info.update(threshold=thr, tracklets=len(kept), identities=len(groups),
                          groups=[g for g in groups if len(g) > 1])  # to check by eye on the contact sheet
    num_ids = int(labels.max()) + 1
    records, times, rec_labels = [], [], []
    cams = {name: k for k, name in enumerate(sorted({by_id[i]["source"] for i in kept}))}
    for lab, i in zip(labels, kept):
        for c in by_id[i]["crops"]:
            mask = str(root / c["mask"]) if c.get("mask") else None  # foreground mask: the attention loss
            records.append(ImageRecord(str(root / c["file"]), int(lab), cams[by_id[i]["source"]], "train", mask))
            times.append(float(c["time"]))
            rec_labels.append(int(lab))
    id_co = np.zeros((num_ids, num_ids), bool)
    for a in range(len(kept)):
        for b in np.flatnonzero(co[a]):
            id_co[labels[a], labels[b]] = True
    spans: list[list[tuple[str, float, float]]] = [[] for _ in range(num_ids)]
    for lab, i in zip(labels, kept):
        ts = [c["time"] for c in by_id[i]["crops"]]
        spans[lab].append((by_id[i]["source"], min(ts), max(ts)))
    return _PseudoIds(kept, labels, records, times, rec_labels, id_co, spans, merge_info)


def _loaders(cfg: Any, ids: _PseudoIds, val: ReIDDataset | None, opts: AdaptOptions, info: dict[str, Any],
             ) -> tuple[DataLoader, Any, Any]:
    """``(train, query, gallery)`` loaders: TrackletSampler batches; the held-out footage (or None)."""
    from hareid.data.loader import ImageDataset, worker_options
    from hareid.data.transforms import build_transforms
    from hareid.engine.trainer import use_masks

    d = cfg.data
    norm = {k: info[k] for k in ("mean", "std") if info.get(k)}  # the model's own normalisation
    train_tf, eval_tf = build_transforms(d.height, d.width, flip=d.flip, pad=d.pad, erasing=d.erasing,
                                         color_jitter=d.color_jitter, **norm)
    sampler = TrackletSampler(ids.rec_labels, ids.times, ids.cooccur, ids.spans, d.batch_size, d.num_instances,
                              seed=cfg.train.seed, mode=opts.sampler, spread=opts.spread,
                              num_batches=opts.iters_per_epoch)
    common: dict[str, Any] = {"persistent_workers": d.workers > 0, **worker_options(d.workers)}
    dataset = ReIDDataset("tracklets", Path(cfg.data.root), ids.records, [], [])
    masks = use_masks(cfg.loss.attn_weight, dataset)  # the footage's foreground masks teach attention
    train_loader = DataLoader(ImageDataset(ids.records, train_tf, masks=masks), batch_size=sampler.p * sampler.k,
                              sampler=sampler, drop_last=True,
                              generator=torch.Generator().manual_seed(cfg.train.seed), **common)
    if val is None:
        return train_loader, None, None
    q_loader = DataLoader(ImageDataset(val.query, eval_tf), batch_size=d.test_batch_size, **common)
    g_loader = DataLoader(ImageDataset(val.gallery, eval_tf), batch_size=d.test_batch_size, **common)
    return train_loader, q_loader, g_loader


def adapt(checkpoint: str | os.PathLike, footage: Sequence[str | os.PathLike], out: str | os.PathLike,
          overrides: Sequence[str] = (), extract_cfg: Any = None, progress: bool = True,
          overwrite: bool = False, monitor: Any = None) -> dict[str, Any]:
    """Adapt ``checkpoint`` to ``footage`` without labels; writes the run folder ``out`` and
    returns the Trainer's result plus ``adapt`` (what ``RUN/adapt.json`` holds).

    ``monitor(model) -> dict``: called before training and after every epoch, its results kept in
    ``adapt.json`` (``"monitor"``); for benchmarks that track a test score. It never picks the epoch.

    Steps: read the checkpoint (once), make the tracklets, split them in time, pseudo-identities,
    the model with fresh classifiers, loaders, the score before training, train, record.
    """
    from hareid.checkpoint import load_checkpoint
    from hareid.footage.extract import prepare_output
    from hareid.models.loading import model_from_checkpoint

    tic = time.perf_counter()
    cfg_overrides, opts = _cfg_overrides(overrides)
    resuming = any(o.startswith("train.resume=") for o in cfg_overrides)
    run = prepare_output(out, overwrite or resuming)  # a resume continues its own folder (the Trainer checks)
    if not Path(checkpoint).is_file():
        raise CheckpointError(f"{checkpoint}: checkpoint not found; pass a hareid or torchreid HACNN .pt file")
    ckpt = load_checkpoint(checkpoint)  # the one read of the checkpoint; passed on from here
    source, info = model_from_checkpoint(ckpt, checkpoint)  # fail early on a foreign checkpoint
    own = run / "tracklets"  # this run's own tracklets: the one input its folder may hold
    ensure_disjoint(run, [*(f for f in footage if not Path(f).expanduser().absolute().is_relative_to(own)),
                          checkpoint])
    created = not run.exists()
    run.mkdir(parents=True, exist_ok=True)
    try:
        return _adapt(checkpoint, footage, run, ckpt, source, info, cfg_overrides, opts, extract_cfg, progress,
                      overwrite, monitor, tic, resuming)
    except BaseException:
        # a failure before the first checkpoint (too few tracklets, a bad option, Ctrl-C while
        # extracting) leaves no folder behind that the retry would refuse
        if created and not (run / "checkpoints").is_dir():
            shutil.rmtree(run, ignore_errors=True)
        raise


def _adapt(checkpoint: str | os.PathLike, footage: Sequence[str | os.PathLike], run: Path, ckpt: Mapping[str, Any],
           source: Any, info: dict[str, Any], cfg_overrides: list[str], opts: AdaptOptions, extract_cfg: Any,
           progress: bool, overwrite: bool, monitor: Any, tic: float, resuming: bool) -> dict[str, Any]:
    """:func:`adapt` once its run folder is ready and its checkpoint read."""
    from hareid.config import load_config
    from hareid.data.tracklets import is_tracklets_folder, load_tracklets_meta
    from hareid.engine.trainer import Trainer
    from hareid.models.weights import load_init_weights

    if resuming and is_tracklets_folder(run / "tracklets"):  # the tracklets of the run being resumed
        root = run / "tracklets"
    else:
        root = _resolve_tracklets(footage, run, extract_cfg, progress)
    t_extract = time.perf_counter() - tic
    meta = load_tracklets_meta(root)
    cfg = load_config("hacnn_adapt", [f"data.root={root}", f"output_dir={run}",
                                      f"data.height={info['height']}", f"data.width={info['width']}",
                                      f"model.init={Path(checkpoint).resolve()}", *cfg_overrides])
    if cfg.data.name != "tracklets":
        raise ConfigError(f"data.name={cfg.data.name}: adaptation reads tracklets; leave data.name alone")
    train_ids, val_ids, straddle = time_split(meta, opts.holdout)
    ids = _pseudo_identities(meta, train_ids, root, opts, source, info)
    del source
    val = _validation(root, val_ids, opts.val_gap)
    model, spec, _ = init_model(checkpoint, ids.num_ids, ckpt)
    init_report = load_init_weights(model, Path(checkpoint).resolve(), ckpt)  # RUN/init.json, no new read
    train_loader, q_loader, g_loader = _loaders(cfg, ids, val, opts, info)
    eval_fn = None
    epoch0: dict[str, Any] | None = None
    log: list[dict[str, Any]] = []
    if val is not None or monitor is not None:
        if val is None:  # the Trainer evaluates only with loaders; these are never read
            q_loader = g_loader = []
        eval_fn = _eval_fn(val, monitor, log)
        model.eval()
        epoch0 = eval_fn(model, q_loader, g_loader) or None
        model.train()
    dataset = ReIDDataset("tracklets", root, ids.records, list(val.query) if val else [],
                          list(val.gallery) if val else [])
    print(f"[hareid] adapt: {len(ids.kept)} training tracklets -> {ids.num_ids} pseudo-identities, "
          f"{len(ids.records)} crops; {len(val_ids)} held-out tracklets "
          f"({'validation: ' + str(len(val.query)) + ' queries' if val else 'no validation: best = last epoch'})"
          + (f"; before adaptation: Rank-1 {100 * epoch0['rank1']:.1f}% mAP {100 * epoch0['mAP']:.1f}%" if epoch0 else ""),
          file=sys.stderr)
    # model.init records where the weights came from (RUN/init.json): init_report, made above
    # several cameras: two cameras' tracklets may be one person, so neither rival class nor negative
    compete = ids.compete() if opts.camera_aware else None
    trainer = Trainer(cfg, model=model, dataset=dataset, loaders=(train_loader, q_loader, g_loader),
                      eval_fn=eval_fn, num_classes=ids.num_ids, model_spec=spec, overwrite=overwrite,
                      init_report=init_report, compete=None if compete is None else torch.from_numpy(compete))
    result = trainer.fit()
    if result.get("interrupted"):  # Ctrl-C / SIGTERM: the checkpoint is saved, best.pt may not exist yet
        result["adapt"] = None
        return result
    best = run / "checkpoints" / "best.pt"
    if not best.is_file() and (run / "checkpoints" / "last.pt").is_file():
        shutil.copyfile(run / "checkpoints" / "last.pt", best)  # no validation: the last epoch
    record = {
        "checkpoint": str(checkpoint), "footage": [str(f) for f in footage], "tracklets": str(root),
        "options": dataclasses.asdict(opts), "train_tracklets": len(ids.kept),
        "held_out_tracklets": len(val_ids), "straddling_dropped": straddle,
        "pseudo_identities": ids.num_ids, "train_crops": len(ids.records), "merge": ids.merge,
        "camera_aware": compete is not None,
        "validation_queries": len(val.query) if val else 0, "epoch0": epoch0, "monitor": log,
        "best": result.get("best") or {"epoch": result.get("epoch"), "metric": "last epoch"},
        "seconds": {"tracklets": round(t_extract, 1), "total": round(time.perf_counter() - tic, 1)},
    }
    atomic_write_text(run / "adapt.json", json.dumps(_plain(record), indent=1, allow_nan=False))
    result["adapt"] = record
    return result


def _plain(v: Any) -> Any:
    """``v`` with numpy scalars as Python numbers and non-finite floats as ``None`` (strict JSON)."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, (np.floating, np.integer)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def run_summary(result: Mapping[str, Any]) -> str:
    """The lines ``hareid adapt`` prints."""
    a = result["adapt"]
    lines = [f"[hareid] adapted on {a['train_crops']} crops of {a['train_tracklets']} tracklets "
             f"({a['pseudo_identities']} pseudo-identities) in {a['seconds']['total']:.0f} s "
             f"(tracklets {a['seconds']['tracklets']:.0f} s)"]
    if a["epoch0"]:
        b = result.get("best") or {}
        lines.append(f"[hareid] label-free validation ({a['validation_queries']} queries): mAP "
                     f"{100 * a['epoch0']['mAP']:.1f}% before, {100 * float(b.get('value', float('nan'))):.1f}% "
                     f"at the best epoch {b.get('epoch')}")
    else:
        lines.append("[hareid] no held-out tracklet long enough for validation: best.pt = last epoch")
    return "\n".join(lines)

