"""Quick model speed check: hareid HACNN vs torchreid's HACNN (loaded by path), interleaved.

    python benchmarks/_model_profile.py [--batch 32] [--size 160 64] [--reps 5] [--threads N] [--profile]
    python benchmarks/_model_profile.py --threads 1 --conv-floor     # time of the convolutions alone
    python benchmarks/_model_profile.py --threads 1 --sampler        # region sampling: grid_sample vs two GEMMs
    python benchmarks/_model_profile.py --threads 1 --fused-profile  # where the bf16 inference form's time goes

Prints images/s (median of ``reps``) for eval forward and a train step (forward, cross-entropy on
both branches, backward, Adam step), in fp32 and under bfloat16 autocast. Not the official table
(that is ``benchmarks/bench_model.py``); a development aid for the model code.

On a shared, loaded CPU, wall-clock with several intra-op threads is dominated by descheduled
threads waiting at barriers; ``--threads 1`` times each call by the thread's own CPU time
(``time.thread_time``), which stays stable under load and is what the model-code changes were
judged by (compare ratios within one run only, either way).

``--conv-floor`` times every convolution of hareid's bf16 inference graph (and of a bf16 training
step: forward + backward, input and weight gradients) on its own, with the shapes the model uses:
the sum is a floor no schedule of the remaining work can beat on this CPU.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests.helpers
warnings.filterwarnings("ignore")

from hareid.models import build_model  # noqa: E402
from tests.helpers.peer import _load  # noqa: E402


def fused_profile(batch: int, size: tuple[int, int]) -> None:
    """Operator shares of the bf16 inference form's forward (``torch.profiler`` self CPU time, 3 calls)."""
    from torch.profiler import profile

    from hareid.models.inference import optimize_for_inference

    net = optimize_for_inference(build_model("hacnn", 751).eval(), dtype=torch.bfloat16)
    x = torch.randn(batch, 3, *size)
    for _ in range(2):
        net(x)
    with profile() as p:
        for _ in range(3):
            net(x)
    events = sorted(p.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    print(f"bf16 inference form, batch {batch}, {size[0]}x{size[1]}: {total / 3e3:.1f} ms per forward (profiled)")
    print("| operator | share | ms per forward |")
    print("|---|---:|---:|")
    for e in events[:12]:
        print(f"| {e.key} | {100 * e.self_cpu_time_total / total:.1f} % | {e.self_cpu_time_total / 3e3:.1f} |")
    conv = sum(e.self_cpu_time_total for e in events if "convolution" in e.key)
    print(f"convolutions: {100 * conv / total:.1f} % of the forward")


def _logits(out):
    if isinstance(out, dict):
        return out["logits"]
    return list(out) if isinstance(out, (tuple, list)) else [out]


def conv_floor(batch: int, size: tuple[int, int], clock) -> None:
    """Sum of the isolated times of every convolution hareid runs (bf16, channels_last)."""
    from hareid.models.inference import ConvAct, optimize_for_inference

    torch.manual_seed(0)
    model = build_model("hacnn", 751)
    shapes: list[tuple[tuple[int, ...], nn.Module]] = []
    infer = optimize_for_inference(model, dtype=torch.bfloat16)
    hooks = [m.register_forward_hook(lambda mod, inp, out: shapes.append((tuple(inp[0].shape), mod)))
             for m in infer.modules() if isinstance(m, ConvAct)]
    infer(torch.randn(batch, 3, *size))
    for h in hooks:
        h.remove()

    def timed(fn, reps=5) -> float:
        fn()
        ts = []
        for _ in range(reps):
            t0 = clock()
            fn()
            ts.append(clock() - t0)
        return sorted(ts)[len(ts) // 2]

    fwd = bwd = flops = 0.0
    for shape, mod in shapes:
        x = torch.randn(shape).bfloat16().contiguous(memory_format=torch.channels_last)
        w, b = mod.weight, mod.bias
        with torch.inference_mode():
            fwd += timed(lambda x=x, mod=mod: mod(x))
        xg = x.clone().requires_grad_()
        wg = w.clone().requires_grad_()
        out = F.conv2d(xg, wg, b, mod.stride, mod.padding, 1, mod.groups)
        grad = torch.randn_like(out)
        wrt = (wg,) if shape[1] == 3 else (xg, wg)  # no input gradient for the image itself
        bwd += timed(lambda out=out, wrt=wrt, grad=grad: torch.autograd.grad(out, wrt, grad, retain_graph=True))
        _, i, kh, kw = w.shape
        flops += 2 * out.numel() * i * kh * kw
    print(f"{len(shapes)} convolutions of hareid's bf16 inference graph, batch {batch}, {size[0]}x{size[1]}: "
          f"{flops / 1e9:.1f} GFLOP")
    print(f"  forward alone: {1e3 * fwd:.0f} ms -> at most {batch / fwd:.0f} images/s for inference")
    print(f"  forward + backward (input and weight gradients): {1e3 * (fwd + bwd):.0f} ms -> at most "
          f"{batch / (fwd + bwd):.0f} images/s for a training step (the training graph has these convolutions "
          f"plus the soft-attention ones' equivalents)")


def sampler_bench(batch: int, clock) -> None:
    """Forward + backward (map and translations) of the hard-attention region sampling at HA-CNN's three
    training shapes, bf16 channels_last: ``grid_sample`` (:func:`sample_regions`) vs two GEMMs
    (:func:`sample_stripes`, what :class:`RegionSampler` runs on bf16 maps), with the gradients compared."""
    from hareid.models.layers.attention import sample_regions, sample_stripes, translations_to_theta

    total = {"grid_sample": 0.0, "two GEMMs": 0.0}
    for c, big_h, big_w, h, w in ((32, 80, 32, 24, 28), (128, 40, 16, 12, 14), (256, 20, 8, 6, 7)):
        x0 = torch.randn(batch, c, big_h, big_w).bfloat16().contiguous(memory_format=torch.channels_last)
        t0 = torch.rand(batch, 4, 2) - 0.5
        grad = torch.randn(batch * 4, c, h, w).bfloat16().contiguous(memory_format=torch.channels_last)
        fns = {"grid_sample": lambda x, t, hw=(h, w): sample_regions(x, translations_to_theta(t, 0.25), hw),
               "two GEMMs": lambda x, t, hw=(h, w): sample_stripes(x, t, 0.25, hw)}

        def run(fn, x0=x0, t0=t0, grad=grad):
            x, t = x0.detach().requires_grad_(), t0.detach().requires_grad_()
            fn(x, t).backward(grad)
            return x.grad.float(), t.grad

        (gx, gt), (sx, st) = run(fns["grid_sample"]), run(fns["two GEMMs"])
        row = []
        for name, fn in fns.items():
            ts = []
            for _ in range(7):
                t_start = clock()
                run(fn)
                ts.append(clock() - t_start)
            ms = 1e3 * sorted(ts)[3]
            total[name] += ms
            row.append(f"{name} {ms:6.1f} ms")
        print(f"({batch}, {c}, {big_h}, {big_w}) -> 4 x {h}x{w}: " + "  ".join(row)
              + f"  | max |d grad x| {float((gx - sx).abs().max()):.3f}, translation grad rel. diff "
              f"{float((gt - st).norm() / gt.norm()):.4f}")
    print(f"total: grid_sample {total['grid_sample']:.1f} ms, two GEMMs {total['two GEMMs']:.1f} ms "
          f"({total['grid_sample'] / total['two GEMMs']:.2f}x)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, nargs=2, default=(160, 64))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--sampling", default="direct")
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads; 1 = time by thread CPU time")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--fused-profile", action="store_true",
                    help="profile the bf16 inference form (optimize_for_inference): operator shares, convolutions' share")
    ap.add_argument("--conv-floor", action="store_true", help="time hareid's convolutions alone (inference + training)")
    ap.add_argument("--sampler", action="store_true", help="time the region sampling forms, forward + backward")
    args = ap.parse_args()
    if args.sampler:
        if args.threads:
            torch.set_num_threads(args.threads)
        sampler_bench(args.batch, time.thread_time if args.threads == 1 else time.perf_counter)
        return
    if args.fused_profile:
        if args.threads:
            torch.set_num_threads(args.threads)
        fused_profile(args.batch, tuple(args.size))
        return
    if args.conv_floor:
        if args.threads:
            torch.set_num_threads(args.threads)
        conv_floor(args.batch, tuple(args.size), time.thread_time if args.threads == 1 else time.perf_counter)
        return
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
