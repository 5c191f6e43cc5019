"""Quick model speed check: hareid HACNN vs torchreid's HACNN (loaded by path), interleaved.

    python benchmarks/_model_profile.py [--batch 32] [--size 160 64] [--reps 5] [--threads N] [--profile]

Prints images/s (median of ``reps``) for eval forward and a train step (forward, cross-entropy on
both branches, backward, Adam step), in fp32 and under bfloat16 autocast. Not the official table
(that is ``benchmarks/bench_model.py``); a development aid for the model code.

On a shared, loaded CPU, wall-clock with several intra-op threads is dominated by descheduled
threads waiting at barriers; ``--threads 1`` times each call by the thread's own CPU time
(``time.thread_time``), which stays stable under load and is what the model-code changes were
judged by (compare ratios within one run only, either way).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
warnings.filterwarnings("ignore")

from _peer import _load  # noqa: E402

from hareid.models import build_model  # noqa: E402


def _logits(out):
    if isinstance(out, dict):
        return out["logits"]
    return list(out) if isinstance(out, (tuple, list)) else [out]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, nargs=2, default=(160, 64))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--sampling", default="direct")
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads; 1 = time by thread CPU time")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, *args.size)
    y = torch.randint(0, 751, (args.batch,))
    models = {"hareid": build_model("hacnn", 751, region_sampling=args.sampling)}
    peer = _load()
    if peer is not None and tuple(args.size) == (160, 64):
        models["torchreid"] = peer.HACNN(751, use_gpu=False)
    opts = {k: torch.optim.Adam(m.parameters(), lr=1e-4) for k, m in models.items()}

    def infer(m):
        m.eval()
        with torch.no_grad():
            m(x)

    def train(m, opt):
        m.train()
        loss = sum(F.cross_entropy(z, y) for z in _logits(m(x)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for dtype in (torch.float32, torch.bfloat16):
        ctx = lambda bf=dtype is torch.bfloat16: torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf)  # noqa: E731
        for mode in ("eval", "train"):
            times: dict[str, list[float]] = {k: [] for k in models}
            for k, m in models.items():  # warm-up
                with ctx():
                    infer(m) if mode == "eval" else train(m, opts[k])
            for _ in range(args.reps):
                for k, m in models.items():  # interleaved
                    with ctx():
                        t0 = clock()
                        infer(m) if mode == "eval" else train(m, opts[k])
                        times[k].append(clock() - t0)
            ips = {k: args.batch / sorted(v)[len(v) // 2] for k, v in times.items()}
            ratio = f"  ratio {ips['hareid'] / ips['torchreid']:.2f}x" if "torchreid" in ips else ""
            print(f"{str(dtype).split('.')[-1]:9s} {mode:5s} " + "  ".join(f"{k} {v:7.1f} img/s" for k, v in ips.items()) + ratio,
                  flush=True)
        if args.profile:
            from torch.profiler import profile

            m = models["hareid"].eval()
            with torch.no_grad(), ctx(), profile() as p:
                for _ in range(3):
                    m(x)
            print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
