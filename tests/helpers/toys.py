"""Toy models and data shared by several test modules (definitions moved here from the modules that
first needed them, unchanged).

* trainer: ``TinyReID`` (in-memory images), ``EpochSampler``, ``TinyNet``, ``tiny_cfg``;
* inference: ``trained_like`` (non-trivial BN statistics and moving hard-attention regions);
* distributed: ``train_once`` (one rank's share of a DDP run, or the one-process reference) and
  ``FS`` (a FeatureSet stand-in); imported by the ``torchrun`` workers too;
* analysis: ``TinyAttnModel``, ``fake_boxes``, ``write_images``, and the report's fake run
  (``EVAL``, ``EXPECTED``, ``make_run``, ``make_ranking``);
* index: ``footage`` (crops of tracklets with footage facts) and ``expected`` (their items).

Only torch, numpy, PIL and ``hareid.config`` are imported up front; the analysis and index pieces
import their hareid modules when called.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from hareid.config import Config, load_config

if TYPE_CHECKING:
    from hareid.analysis.report import Ranking
    from hareid.index import Item


# --------------------------------------------------------------------------------------- trainer


class TinyReID(Dataset):
    """``ids x per_id`` fixed 3x16x8 images; the transform draws from torch, numpy and python RNGs."""

    def __init__(self, ids: int = 6, per_id: int = 8, seed: int = 0, offset: int = 0, augment: bool = True):
        g = torch.Generator().manual_seed(seed)
        self.protos = torch.randn(ids, 3, 16, 8, generator=g)
        self.items = [(p, i % 3, f"img_{offset + p}_{i}.jpg") for p in range(ids) for i in range(per_id)]
        self.noise = torch.randn(len(self.items), 3, 16, 8, generator=g) * 0.5
        self.augment = augment

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int, str]:
        pid, cam, path = self.items[i]
        x = self.protos[pid] + self.noise[i]
        if self.augment:
            x = x + 0.1 * torch.randn_like(x)  # torch global RNG
            x = x * float(1.0 + 0.1 * np.random.rand())  # numpy global RNG
            if random.random() < 0.5:  # python RNG
                x = x.flip(-1)
        return x, pid, cam, path


class EpochSampler(Sampler[int]):
    """Shuffles as a pure function of (seed, epoch), like IdentitySampler / DistributedSampler."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


class TinyNet(nn.Module):
    """Conv-BN-ReLU-GAP-Linear-Dropout; train: {"logits": [..], "features": [..]}, eval: embedding."""

    def __init__(self, num_classes: int = 6, bn: bool = True, dropout: float = 0.2) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8) if bn else nn.Identity()
        self.fc = nn.Linear(8, 16)
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(16, num_classes)
        self.embed_dim = 16

    def forward(self, x: torch.Tensor) -> Any:
        f = F.relu(self.bn(self.conv(x))).mean(dim=(2, 3))
        f = self.fc(f)
        if not self.training:
            return F.normalize(f, dim=1)
        return {"logits": [self.classifier(self.drop(f))], "features": [f]}


def tiny_cfg(out: Path, **train: Any) -> Config:
    cfg = load_config(None, [
        f"output_dir={out}", "train.epochs=3", "train.amp=none", "train.progress=false",
        "train.eval_every=1", "data.workers=0", "optim.lr=0.01", "optim.scheduler=cosine",
        "optim.warmup_epochs=1", "loss.triplet_weight=1.0", "train.device=cpu",
    ])
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


# ------------------------------------------------------------------------------------- inference


def trained_like(model: nn.Module, seed: int = 1) -> nn.Module:
    """Non-trivial BN statistics / affine parameters and moving hard-attention regions, so folding,
    factorisation and region sampling are exercised (a fresh model has identity BN and fixed stripes)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=gen) * 0.4 - 0.2)
        for name, p in model.named_parameters():
            if "hard.fc.weight" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model.eval()


# ----------------------------------------------------------------------------------- distributed
# Equivalence needs a model whose forward does not depend on how the global batch is split (see
# tests/test_distributed.py): no BatchNorm, no dropout, cross-entropy only.


class GlobalOrderSampler(Sampler[int]):
    """Rank ``r``'s slice of every global batch of one (seed, epoch) permutation."""

    def __init__(self, n: int, global_batch: int, rank: int = 0, world_size: int = 1) -> None:
        self.n, self.gb, self.rank, self.world, self.epoch = n, global_batch, rank, world_size, 0
        self.lb = global_batch // world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n // self.gb * self.lb

    def __iter__(self):
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.epoch)).tolist()
        for i in range(self.n // self.gb):
            start = i * self.gb + self.rank * self.lb
            yield from perm[start:start + self.lb]


def make_loaders(rank: int, world: int) -> tuple[DataLoader, DataLoader, DataLoader]:
    train = TinyReID(augment=False)
    return (
        DataLoader(train, batch_size=8 // world, sampler=GlobalOrderSampler(len(train), 8, rank, world),
                   drop_last=True),
        DataLoader(TinyReID(per_id=2, seed=1, offset=100, augment=False), batch_size=5),
        DataLoader(TinyReID(per_id=4, seed=2, offset=200, augment=False), batch_size=5),
    )


def make_cfg(out: Path):
    cfg = tiny_cfg(out, epochs=2, eval_every=0)
    cfg.loss.triplet_weight = 0.0
    cfg.optim.warmup_epochs = 0
    return cfg


def train_once(out: Path, rank: int, world: int) -> tuple[dict, dict]:
    from hareid.engine import Trainer

    torch.manual_seed(0)
    model = TinyNet(bn=False, dropout=0.0)
    tr = Trainer(make_cfg(out), model=model, loaders=make_loaders(rank, world), num_classes=6,
                 model_spec={"name": "tiny", "num_classes": 6})
    res = tr.fit()
    return res, {k: v.detach().clone() for k, v in tr.model.state_dict().items()}


@dataclass
class FS:
    """Stand-in with FeatureSet's fields (gather_feature_set only needs those)."""

    features: torch.Tensor
    pids: np.ndarray
    camids: np.ndarray
    paths: list[str]


# -------------------------------------------------------------------------------------- analysis


class TinyAttnModel(nn.Module):
    """Stand-in with the ``forward_attention`` contract of hareid models (3 stages, T regions)."""

    def __init__(self, stages: int = 3, regions: int = 4) -> None:
        super().__init__()
        self.stages, self.regions = stages, regions
        self.conv = nn.Conv2d(3, 4, 1)

    def forward_attention(self, x: Tensor) -> dict[str, list[Tensor]]:
        b, _, h, w = x.shape
        soft, trans = [], []
        base = torch.linspace(-0.75, 0.75, self.regions)
        for s in range(self.stages):
            y = F.adaptive_avg_pool2d(self.conv(x), (h // 2 ** (s + 1), w // 2 ** (s + 1)))
            soft.append(torch.sigmoid(y))
            t = torch.stack([torch.full_like(base, 0.1 * s), base], dim=-1)  # (T, 2) = (tx, ty)
            trans.append(torch.tanh(t).expand(b, -1, -1))
        return {"soft": soft, "translations": trans}


def fake_boxes(t: Tensor, hw: tuple[int, int], scale_h: float) -> Tensor:
    """Stand-in for hareid.models.layers.attention.translations_to_boxes: full-width bands centred at ty."""
    h, w = hw
    cx, cy = (t[..., 0] + 1) / 2 * w, (t[..., 1] + 1) / 2 * h
    rh = h * scale_h
    return torch.stack([cx - w / 2, cy - rh / 2, cx + w / 2, cy + rh / 2], dim=-1)


def write_images(folder: Path, colors: list[tuple[int, int, int]], size=(64, 128)) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, c in enumerate(colors):
        p = folder / f"{i:03d}.png"
        Image.new("RGB", size, c).save(p)
        paths.append(str(p))
    return paths


EVAL = {"rank1": 0.8734, "rank5": 0.9421, "rank10": 0.9612, "mAP": 0.7123, "mINP": 0.4012,
        "cmc": list(np.linspace(0.8734, 1.0, 20))}
EXPECTED = {"rank1": "87.34", "rank5": "94.21", "rank10": "96.12", "mAP": "71.23", "mINP": "40.12"}


def make_run(root: Path) -> Path:
    """A fake run folder as the engine writes it (no checkpoint)."""
    run = root / "run_<demo>"
    run.mkdir(parents=True)
    cfg = {"data": {"name": "market1501", "root": "/nowhere", "height": 64, "width": 32},
           "model": {"name": "hacnn", "note": "<script>alert(1)</script>"},
           "optim": {"lr": 3e-4}, "output_dir": str(run)}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    lines = [json.dumps({"epoch": e, "iteration": 50 * e, "loss": 6.0 / e, "acc": 0.15 * e,
                         "lr": 3e-4 * 0.5 ** (e // 3), "images_per_s": 300.0}) for e in range(1, 6)]
    lines += [json.dumps({"epoch": e, "rank1": 0.5 + 0.1 * e, "rank5": 0.7, "mAP": 0.3 + 0.1 * e,
                          "mINP": 0.2}) for e in (2, 4)]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (run / "eval.json").write_text(json.dumps(EVAL))
    return run


def make_ranking(root: Path, nq: int = 6, ng: int = 12) -> Ranking:
    """A hand-made ranking over generated images: query i has pid i % 3, camera 0."""
    from hareid.analysis.report import Ranking

    rng = np.random.default_rng(0)
    colors = [tuple(int(c) for c in rng.integers(30, 230, 3)) for _ in range(ng)]
    q_paths = write_images(root / "query", colors[:nq])
    g_paths = write_images(root / "gallery", colors)
    q_pids, g_pids = np.arange(nq) % 3, np.arange(ng) % 4 - (np.arange(ng) == ng - 1)
    q_cams, g_cams = np.zeros(nq, int), np.arange(ng) % 3
    ap = np.linspace(0.1, 1.0, nq)
    ap[1] = np.nan
    return Ranking(rng.random((nq, ng)), q_pids, g_pids, q_cams, g_cams, q_paths, g_paths, ap)


# ----------------------------------------------------------------------------------------- index


def footage(n: int = 120, d: int = 16, seed: int = 0) -> tuple[np.ndarray, dict]:
    """``n`` crops of 12 tracklets on 3 cameras; every 5th crop without a time, every 4th tracklet
    a plain image (no tracklet, frame or box)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    tr = [f"cam{i % 3}/{i % 12}" if (i % 12) % 4 else "" for i in range(n)]
    meta = {"paths": [f"crops/{i:04d}.jpg" for i in range(n)],
            "cameras": [f"cam{i % 3}" for i in range(n)],
            "times": [None if i % 5 == 0 else 1.7e9 + i for i in range(n)],
            "sources": [f"/videos/cam{i % 3}.mp4" for i in range(n)],
            "tracklets": tr,
            "frames": [i if t else -1 for i, t in enumerate(tr)],
            "boxes": [(i, 2.0 * i, i + 10.5, 2.0 * i + 30) if t else None for i, t in enumerate(tr)]}
    return x, meta


def expected(meta: dict, j: int, first: int) -> Item:
    from hareid.index import Item

    return Item(first + j, meta["paths"][j], meta["cameras"][j], meta["times"][j],
                meta["sources"][j], -1, meta["tracklets"][j], meta["frames"][j],
                meta["boxes"][j])
