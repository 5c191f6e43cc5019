"""Attention scores of an ablation, per variant: mean ± std over seeds (a markdown table).

Scores every run folder ``OUT/<variant>_seed<k>`` of ``hareid ablate --output OUT`` with
:func:`hareid.analysis.attention_score.score_run` (trained best checkpoint vs the same model untrained; it
writes ``RUN/attention_score.json``, reused when present) and prints, per variant and stage:

* soft attention: ``contrast_lift`` = the share of the mask's mass above its own floor that lies
  on the person, divided by the person's share of the image (1 = no preference; the issue's
  target is >= 1.5 at stages 2 and 3), and ``lift`` (plain mass on the person / area share);
* hard attention: ``on_person`` (share of region pixels on the person).

    python benchmarks/bench_attention.py /work/data/runs/ablation_v2 --num-images 200
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from _machine import cpu_model


def _ms(values: list[float]) -> str:
    a = np.asarray(values, dtype=float)
    if len(a) == 0:
        return "—"
    return f"{a.mean():.2f} ± {a.std(ddof=1):.2f}" if len(a) > 1 else f"{a.mean():.2f}"


def main() -> None:
    from hareid.analysis.attention_score import score_run

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("output", type=Path, help="the ablation folder (hareid ablate --output)")
    p.add_argument("--num-images", type=int, default=200)
    p.add_argument("--variants", nargs="+", default=None, help="variants to score (default: all found)")
    p.add_argument("--rescore", action="store_true", help="score again even if attention_score.json exists")
    a = p.parse_args()
    runs: dict[str, list[Path]] = {}
    for run in sorted(a.output.glob("*_seed*")):
        if (run / "eval.json").is_file():
            runs.setdefault(run.name.rsplit("_seed", 1)[0], []).append(run)
    names = [v for v in (a.variants or runs) if v in runs]
    scores: dict[str, list[dict]] = {}
    share = []
    for v in names:
        for run in runs[v]:
            path = run / "attention_score.json"
            if a.rescore or not path.is_file():
                score_run(run, num_images=a.num_images)
            s = json.loads(path.read_text())
            scores.setdefault(v, []).append(s)
            share.append(s["trained"]["mask_share"])
    print(f"CPU: {cpu_model()}; {a.num_images} query/gallery images per run; person share of the image "
          f"{np.mean(share):.3f}\n")
    print("| variant | seeds | model | soft contrast_lift s1 / s2 / s3 | soft lift s1 / s2 / s3 | "
          "hard on_person s1 / s2 / s3 |")
    print("|---|---|---|---|---|---|")
    for v in names:
        for model in ("untrained", "trained"):
            rows = [s[model] for s in scores[v]]
            cells = []
            for kind, key in (("soft", "contrast_lift"), ("soft", "lift"), ("hard", "on_person")):
                stages = [f"stage{i}" for i in (1, 2, 3)]
                vals = [_ms([r[kind][st][key] for r in rows if st in r[kind]]) for st in stages]
                cells.append(" / ".join(vals) if any(x != "—" for x in vals) else "—")
            print(f"| {v} | {len(rows)} | {model} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
