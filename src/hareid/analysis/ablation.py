"""Ablation of harmonious attention: same recipe, budget and seeds for every variant.

The variants are options of the one model (``hareid.models.core.HarmNet``), not copies of it:

==================  ========================================================  =========================
variant             what is on                                                model options
==================  ========================================================  =========================
none                global branch only, no attention                          soft off, no local
soft                soft (spatial x channel) attention, global branch only    no local branch
hard                hard regions + local branch, no soft attention            soft off
full                HarmAttn: soft + hard + cross-attention interaction       defaults
no_cross            full, but regions of stages 2-3 not from the global path  cross_attn off
soft_sigmoid        soft, with the full-range mask ``sigmoid(BN(conv))``      soft_mask=sigmoid
full_sigmoid        full, with the full-range mask                            soft_mask=sigmoid
full_temperature    full, full-range mask with a learned temperature          soft_mask=temperature
soft_spatial        soft, with a spatial-only full-range mask                 soft_mask=spatial
full_spatial        full, with a spatial-only full-range mask                 soft_mask=spatial
soft_guided         soft_spatial, taught by the person masks (attention loss) + loss.attn_weight=1
full_guided         full_spatial, taught by the person masks (attention loss) + loss.attn_weight=1
==================  ========================================================  =========================

The ``*_guided`` variants add :class:`hareid.engine.losses.AttentionMaskLoss` (mask-guided attention; the
synthetic sets carry the person mask of every image) to the spatial-only mask: with the paper's
mask the loss barely moves where the attention lies (its spatial branch works at half the stage's
resolution, so at stage 3 of a 160x64 input, 5x2 cells, it cannot put more weight on the middle of
the image than on both sides; docs/attention.md has the measurements).

:func:`run_ablation` trains every (variant, seed) pair with :class:`hareid.engine.Trainer` on an
existing synthetic tree (it writes no data: ``hareid synthetic ROOT`` does), evaluates after every
``curve_every`` epochs so learning curves can be drawn, appends each result (final Rank-1 / mAP
and the curve) to ``OUT/results.jsonl`` as it finishes (an interrupted ablation resumes where it
stopped; an interrupted run resumes from its ``last.pt``), and returns a markdown table of Rank-1
and mAP as mean +- sample standard deviation. It also writes ``OUT/ablation.md``, the bar chart
``OUT/ablation.png`` and the curves ``OUT/ablation_curves.png``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hareid.errors import ConfigError, DataError
from hareid.fileio import atomic_path, atomic_write_text

__all__ = ["VARIANTS", "format_ablation", "plot_curves", "run_ablation"]

_FULL = ["model.soft_attn=true", "model.hard_attn=true", "model.local_branch=true", "model.cross_attn=true"]
_SOFT = ["model.soft_attn=true", "model.local_branch=false"]
VARIANTS: dict[str, list[str]] = {
    "none": ["model.soft_attn=false", "model.hard_attn=false", "model.local_branch=false"],
    "soft": _SOFT,
    "hard": ["model.soft_attn=false", "model.hard_attn=true", "model.local_branch=true"],
    "full": _FULL,
    "no_cross": ["model.soft_attn=true", "model.hard_attn=true", "model.local_branch=true", "model.cross_attn=false"],
    "soft_sigmoid": [*_SOFT, "model.soft_mask=sigmoid"],
    "full_sigmoid": [*_FULL, "model.soft_mask=sigmoid"],
    "full_temperature": [*_FULL, "model.soft_mask=temperature"],
    "soft_spatial": [*_SOFT, "model.soft_mask=spatial"],
    "full_spatial": [*_FULL, "model.soft_mask=spatial"],
    "soft_guided": [*_SOFT, "model.soft_mask=spatial", "loss.attn_weight=1"],
    "full_guided": [*_FULL, "model.soft_mask=spatial", "loss.attn_weight=1"],
}
#: What ``hareid ablate`` trains without ``--variants``: the paper's five.
DEFAULT_VARIANTS = ("none", "soft", "hard", "full", "no_cross")


def _done(results: Path) -> dict[tuple[str, int], dict[str, Any]]:
    if not results.is_file():
        return {}
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    return {(r["variant"], r["seed"]): r for r in rows}


def _curve(run_dir: Path) -> list[dict[str, float]]:
    """The evaluation lines of ``RUN/metrics.jsonl``: ``[{"epoch", "rank1", "mAP"}, ...]``."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{"epoch": r["epoch"], "rank1": float(r["rank1"]), "mAP": float(r["mAP"])} for r in rows if "mAP" in r]


def run_ablation(
    output: Path,
    seeds: Sequence[int] = (0, 1, 2),
    variants: Sequence[str] | None = None,
    overrides: Sequence[str] = (),
    data_root: str | Path | None = None,
    config: str = "hacnn_synthetic",
    curve_every: int = 1,
) -> str:
    """Train each variant for each seed (skipping pairs already in ``results.jsonl``); return the table.

    ``data_root``: a complete synthetic tree (default: the demo's cache of the default version).
    ``curve_every``: evaluate every this many epochs (``train.eval_every``; 0: only at the end).
    """
    from hareid.config import load_config
    from hareid.data.synthetic import DEFAULT_VERSION, default_root, synthetic_version
    from hareid.engine import Trainer

    names = list(variants or DEFAULT_VARIANTS)
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise ConfigError(f"unknown ablation variant(s) {unknown}; choose from {list(VARIANTS)}")
    root = Path(data_root).expanduser() if data_root else default_root(DEFAULT_VERSION)
    if synthetic_version(root) is None:
        raise DataError(f"{root}: no complete synthetic benchmark there; write it first with "
                        f"`hareid synthetic {root}` (add --version 2 for v2) or pass --data-root")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    results = output / "results.jsonl"
    done = _done(results)
    for seed in seeds:
        for name in names:
            if (name, seed) in done:
                continue
            run_dir = output / f"{name}_seed{seed}"
            cfg = load_config(config, [
                "data.name=synthetic", f"data.root={root}", f"output_dir={run_dir}", f"train.seed={seed}",
                f"train.eval_every={curve_every}", "train.resume=auto", *overrides, *VARIANTS[name],
            ])
            print(f"[hareid] ablation: {name} seed {seed} -> {run_dir}")
            t0 = time.perf_counter()
            metrics = Trainer(cfg).fit()
            if metrics.get("interrupted"):
                raise KeyboardInterrupt(f"ablation run {run_dir} interrupted; run the same command to resume")
            row = {"variant": name, "seed": seed, "rank1": float(metrics["rank1"]), "mAP": float(metrics["mAP"]),
                   "epochs": int(metrics["epoch"]), "seconds": round(time.perf_counter() - t0, 1),
                   "curve": _curve(run_dir)}
            with results.open("a") as f:
                f.write(json.dumps(row) + "\n")
            done[(name, seed)] = row
    rows = [r for r in done.values() if r["variant"] in names]
    table = format_ablation(rows, order=names)
    atomic_write_text(output / "ablation.md", table + "\n")
    _plot(rows, names, output / "ablation.png")
    if any(r.get("curve") for r in rows):
        plot_curves(rows, names, output / "ablation_curves.png")
    return table


def _stats(values: list[float]) -> tuple[float, float]:
    a = 100 * np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def format_ablation(rows: Sequence[dict[str, Any]], order: Sequence[str] | None = None) -> str:
    """Markdown table: variant, seeds, Rank-1 and mAP (%) as mean +- sample std."""
    order = list(order or dict.fromkeys(r["variant"] for r in rows))
    lines = ["| variant | seeds | Rank-1 (%) | mAP (%) |", "|---|---|---|---|"]
    for v in order:
        sel = [r for r in rows if r["variant"] == v]
        if not sel:
            continue
        r1, r1s = _stats([r["rank1"] for r in sel])
        m, ms = _stats([r["mAP"] for r in sel])
        lines.append(f"| {v} | {len(sel)} | {r1:.1f} ± {r1s:.1f} | {m:.1f} ± {ms:.1f} |")
    return "\n".join(lines)


def _plot(rows: Sequence[dict[str, Any]], order: Sequence[str], out: Path) -> None:
    from matplotlib.figure import Figure

    order = [v for v in order if any(r["variant"] == v for r in rows)]
    fig = Figure(figsize=(max(6.0, 1.0 * len(order)), 3.4))
    ax = fig.subplots()
    x = np.arange(len(order))
    for off, key in ((-0.2, "rank1"), (0.2, "mAP")):
        stats = [_stats([r[key] for r in rows if r["variant"] == v]) for v in order]
        ax.bar(x + off, [s[0] for s in stats], 0.4, yerr=[s[1] for s in stats], capsize=3,
               label="Rank-1" if key == "rank1" else "mAP")
    ax.set_xticks(x, order, rotation=25 if len(order) > 5 else 0, ha="right" if len(order) > 5 else "center")
    ax.set_ylabel("%")
    ax.set_title("attention ablation (mean ± std over seeds)")
    ax.legend()
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def plot_curves(rows: Sequence[dict[str, Any]], order: Sequence[str], out: Path) -> Path:
    """Rank-1 and mAP against epochs per variant: mean over seeds, band = +- one sample std."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.6))
    axes = fig.subplots(1, 2)
    for v in order:
        curves = [r["curve"] for r in rows if r["variant"] == v and r.get("curve")]
        if not curves:
            continue
        epochs = sorted(set.intersection(*({c["epoch"] for c in cur} for cur in curves)))
        for ax, key in zip(axes, ("rank1", "mAP")):
            vals = 100 * np.array([[next(c[key] for c in cur if c["epoch"] == e) for e in epochs] for cur in curves])
            mean = vals.mean(0)
            std = vals.std(0, ddof=1) if len(vals) > 1 else np.zeros_like(mean)
            dashed = "--" if v.startswith("soft") or v == "none" else "-"
            (line,) = ax.plot(epochs, mean, dashed, marker=".", label=f"{v} ({len(curves)})")
            ax.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.15)
    for ax, title in zip(axes, ("Rank-1 (%)", "mAP (%)")):
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle("attention ablation: test metrics during training (mean ± std over seeds)", fontsize=10)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return out
