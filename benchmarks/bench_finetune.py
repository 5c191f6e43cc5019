"""Fine-tuning from a checkpoint vs the same recipe from random weights, on a second synthetic set.

    python benchmarks/bench_finetune.py runs/demo/checkpoints/best.pt --work runs/finetune_bench [--epochs 3]

Writes the synthetic benchmark with ``--seed`` (default 1: identities, cameras and scenes other than
the demo's) into ``WORK/data``, then trains ``hacnn_finetune`` twice (``model.init=CKPT`` and random
weights), evaluating before the first step and after every epoch, and prints one table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _machine import machine_line

from hareid.config import load_config
from hareid.data.synthetic import write_synthetic
from hareid.engine import Trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1, help="seed of the synthetic set fine-tuned on")
    a = ap.parse_args()
    root = write_synthetic(a.work / "data", seed=a.seed, progress=False)
    rows = []
    for arm, extra in (("init", [f"model.init={a.checkpoint}"]), ("scratch", [])):
        out = a.work / arm
        cfg = load_config("hacnn_finetune", ["data.name=synthetic", f"data.root={root}", f"output_dir={out}",
                                              f"train.epochs={a.epochs}", "train.eval_every=1",
                                              "train.progress=false", *extra])
        trainer = Trainer(cfg, overwrite=True)
        trainer.setup()
        t0 = time.perf_counter()
        start = trainer.evaluate()
        trainer.fit()
        curve = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"mAP"' in line]
        rows.append((arm, [(start["rank1"], start["mAP"])] + [(c["rank1"], c["mAP"]) for c in curve],
                     time.perf_counter() - t0))
    print(machine_line())
    print("| start | " + " | ".join(f"epoch {e}" for e in range(a.epochs + 1)) + " | wall (s) |")
    print("|---|" + "---|" * (a.epochs + 1) + "---:|")
    for arm, points, wall in rows:
        cells = " | ".join(f"{100 * r:.1f} / {100 * m:.1f}" for r, m in points)
        print(f"| {arm} | {cells} | {wall:.0f} |")
    print("(Rank-1 / mAP in %)")


if __name__ == "__main__":
    main()
