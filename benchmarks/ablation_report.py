"""Table and learning curves of a results file written by ``benchmarks/run_ablation_guided.sh``.

    python benchmarks/ablation_report.py docs/results/ablation_guided_v1.jsonl \\
        --curves docs/images/ablation_guided_v1_curves.png

Prints the markdown table (mean +- sample std over seeds, final epoch) and, per variant, the
epoch-by-epoch means, so a reader can see whether the ranking has settled.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from hareid.analysis.ablation import format_ablation, plot_curves


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", help="a results .jsonl (one finished run a line)")
    ap.add_argument("--curves", default=None, help="write the learning-curve plot here (PNG)")
    a = ap.parse_args()
    rows = [json.loads(line) for line in Path(a.results).read_text().splitlines() if line.strip()]
    order = list(dict.fromkeys(r["variant"] for r in sorted(rows, key=lambda r: r["variant"])))
    print(format_ablation(rows, order))
    print("\n| variant | seeds | mAP (%) per evaluated epoch: mean over seeds |\n|---|---|---|")
    for v in order:
        curves = [r["curve"] for r in rows if r["variant"] == v and r.get("curve")]
        epochs = sorted(set.intersection(*({c["epoch"] for c in cur} for cur in curves))) if curves else []
        means = [np.mean([next(c["mAP"] for c in cur if c["epoch"] == e) for cur in curves]) for e in epochs]
        print(f"| {v} | {len(curves)} | " + ", ".join(f"ep {e}: {100 * m:.1f}" for e, m in zip(epochs, means)) + " |")
    if a.curves:
        plot_curves(rows, order, Path(a.curves))
        print(f"\ncurves -> {a.curves}")


if __name__ == "__main__":
    main()
