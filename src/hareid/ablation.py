"""Ablation of harmonious attention: same recipe, budget and seeds for every variant.

The variants are options of the one model (``hareid.models.core.HarmNet``), not copies of it:

============  ==============================================================  =================
variant       what is on                                                       model options
============  ==============================================================  =================
none          global branch only, no attention                                 soft off, no local
soft          soft (spatial x channel) attention, global branch only          no local branch
hard          hard regions + local branch, no soft attention                  soft off
full          HarmAttn: soft + hard + cross-attention interaction              defaults
no_cross      full, but regions of stages 2-3 not taken from the global path   cross_attn off
============  ==============================================================  =================

:func:`run_ablation` trains every (variant, seed) pair with :class:`hareid.engine.Trainer`, appends
each result to ``OUT/results.jsonl`` as it finishes (an interrupted ablation resumes where it
stopped), and returns a markdown table of Rank-1 and mAP as mean +- sample standard deviation.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hareid.errors import ConfigError

__all__ = ["VARIANTS", "format_ablation", "run_ablation"]

VARIANTS: dict[str, list[str]] = {
    "none": ["model.soft_attn=false", "model.hard_attn=false", "model.local_branch=false"],
    "soft": ["model.soft_attn=true", "model.local_branch=false"],
    "hard": ["model.soft_attn=false", "model.hard_attn=true", "model.local_branch=true"],
    "full": ["model.soft_attn=true", "model.hard_attn=true", "model.local_branch=true", "model.cross_attn=true"],
    "no_cross": ["model.soft_attn=true", "model.hard_attn=true", "model.local_branch=true", "model.cross_attn=false"],
}


def _done(results: Path) -> dict[tuple[str, int], dict[str, Any]]:
    if not results.is_file():
        return {}
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    return {(r["variant"], r["seed"]): r for r in rows}


def run_ablation(
    output: Path,
    seeds: Sequence[int] = (0, 1, 2),
    variants: Sequence[str] | None = None,
    overrides: Sequence[str] = (),
    data_root: str | Path | None = None,
    config: str = "hacnn_synthetic",
) -> str:
    """Train each variant for each seed (skipping pairs already in ``results.jsonl``); return the table."""
    from hareid import CACHE_DIR
    from hareid.config import load_config
    from hareid.data.synthetic import _is_complete, write_synthetic
    from hareid.engine import Trainer

    names = list(variants or VARIANTS)
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise ConfigError(f"unknown ablation variant(s) {unknown}; choose from {list(VARIANTS)}")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    results = output / "results.jsonl"
    done = _done(results)
    root = Path(data_root or CACHE_DIR / "synthetic")
    if data_root is None or not _is_complete(root, None):  # an explicit complete tree is used as is
        write_synthetic(root)
    for seed in seeds:
        for name in names:
            if (name, seed) in done:
                continue
            run_dir = output / f"{name}_seed{seed}"
            cfg = load_config(config, [
                "data.name=synthetic", f"data.root={root}", f"output_dir={run_dir}", f"train.seed={seed}",
                "train.resume=auto",
                *overrides, *VARIANTS[name],
            ])
            print(f"[hareid] ablation: {name} seed {seed} -> {run_dir}")
            metrics = Trainer(cfg).fit()
            row = {"variant": name, "seed": seed, "rank1": float(metrics["rank1"]), "mAP": float(metrics["mAP"])}
            with results.open("a") as f:
                f.write(json.dumps(row) + "\n")
            done[(name, seed)] = row
    rows = [r for r in done.values() if r["variant"] in names]
    table = format_ablation(rows, order=names)
    (output / "ablation.md").write_text(table + "\n")
    _plot(rows, names, output / "ablation.png")
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
    fig = Figure(figsize=(6, 3.2))
    ax = fig.subplots()
    x = np.arange(len(order))
    for off, key in ((-0.2, "rank1"), (0.2, "mAP")):
        stats = [_stats([r[key] for r in rows if r["variant"] == v]) for v in order]
        ax.bar(x + off, [s[0] for s in stats], 0.4, yerr=[s[1] for s in stats], capsize=3,
               label="Rank-1" if key == "rank1" else "mAP")
    ax.set_xticks(x, order)
    ax.set_ylabel("%")
    ax.set_title("attention ablation (mean ± std over seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
