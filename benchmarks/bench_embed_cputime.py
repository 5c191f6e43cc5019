"""Embedder CPU time per crop, hacnn vs mobilenetv2_harm (random init; speed does not depend on the
weights), at 160x64 and 256x128, float32 and bfloat16, interleaved, median of 3:

    python benchmarks/bench_embed_cputime.py

Process CPU seconds with 1 thread, so the numbers hold on a shared, loaded machine (wall-clock
throughput with every backend: ``bench_embedder.py --model hacnn --model mobilenetv2_harm``). Crops
are 128x48 uint8 (preprocessing included, as a tracker sees it), batch 32.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine_line

from hareid import Embedder
from hareid.checkpoint import save_checkpoint
from hareid.models import build_model

MODELS = ("hacnn", "mobilenetv2_harm")
SIZES = ((160, 64), (256, 128))


def main() -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (128, 48, 3), dtype=np.uint8) for _ in range(32)]
    print(machine_line())
    with tempfile.TemporaryDirectory() as tmp:
        embs: dict[tuple[tuple[int, int], str, str], Embedder] = {}
        for size in SIZES:
            for name in MODELS:
                torch.manual_seed(0)
                path = Path(tmp) / f"{name}{size[0]}.pt"
                save_checkpoint({"state_dict": build_model(name, num_classes=10).state_dict(),
                                 "model": {"name": name, "num_classes": 10},
                                 "config": {"data": {"height": size[0], "width": size[1]}}}, path)
                for dtype in (torch.float32, torch.bfloat16):
                    embs[(size, name, str(dtype)[6:])] = Embedder(path, device="cpu", dtype=dtype)
        for emb in embs.values():  # warm up
            emb.embed(crops[:4])
        times: dict[tuple[tuple[int, int], str, str], list[float]] = {k: [] for k in embs}
        for _ in range(3):
            for key, emb in embs.items():
                t0 = time.process_time()
                emb.embed(crops)
                times[key].append(time.process_time() - t0)
    print("| input | model | dtype | CPU ms per crop (batch 32, 1 thread) |\n|---|---|---|---:|")
    for (size, name, dtype), v in times.items():
        print(f"| {size[0]}x{size[1]} | {name} | {dtype} | {1000 * statistics.median(v) / 32:.1f} |")


if __name__ == "__main__":
    main()
