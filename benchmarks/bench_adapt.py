"""Time of `hareid adapt` on raw video: tracklet extraction + label-free adaptation.

    python benchmarks/bench_adapt.py --video vtest.avi --checkpoint runs/demo/checkpoints/best.pt

Target (issue 12): 400 frames of 768x576 video adapted in <= 10 minutes on 2 CPU cores, tracklet
extraction included. Runs the shipped ``hacnn_adapt`` recipe unchanged (extra KEY=VALUE items are
passed on) on frames [0, --frames) and prints one table row per stage with the CPU model.
(vtest.avi: OpenCV's sample, e.g. Debian's opencv-doc /usr/share/doc/opencv-doc/examples/data/.)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model

from hareid.footage import ExtractConfig, open_footage
from hareid.footage.adapt import adapt


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--video", required=True)
    p.add_argument("--checkpoint", required=True, help="the model to adapt (hareid or torchreid HACNN)")
    p.add_argument("--frames", type=int, default=400)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="run folder (default: a temporary one)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    src = open_footage(a.video, stop=a.frames)
    first = next(src.frames())
    h, w = first.image.shape[:2]
    tmp = tempfile.TemporaryDirectory() if a.out is None else None
    out = Path(a.out or Path(tmp.name) / "run")
    t0 = time.perf_counter()
    result = adapt(a.checkpoint, [a.video], out, [*a.overrides, "train.progress=false"],
                   extract_cfg=ExtractConfig(stop=a.frames), progress=False, overwrite=True)
    total = time.perf_counter() - t0
    rec = result["adapt"]
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in metrics if "images_per_s" in m]
    meta = json.loads((out / "tracklets" / "tracklets.json").read_text())
    ms = meta["sources"][0]["stats"]["ms_per_frame"]
    print(f"\nCPU: {cpu_model()} ({torch.get_num_threads()} threads), torch {torch.__version__}")
    print(f"video {a.video}: frames 0-{a.frames - 1} of {w}x{h}\n")
    print("| stage | what | time (s) |")
    print("|---|---|---:|")
    print(f"| tracklets | {ms:.0f} ms/frame; {len(meta['tracklets'])} tracklets, "
          f"{sum(len(t['crops']) for t in meta['tracklets'])} crops | {rec['seconds']['tracklets']:.0f} |")
    print(f"| adaptation | {len(train)} epochs on {rec['train_crops']} crops of {rec['pseudo_identities']} "
          f"pseudo-identities, {sum(m['images_per_s'] for m in train) / max(len(train), 1):.0f} images/s; "
          f"validation each epoch | {rec['seconds']['total'] - rec['seconds']['tracklets']:.0f} |")
    print(f"| **total** | target <= 600 s | **{total:.0f}** |")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
