"""Model speed in one run: torchreid's HACNN (eager and at its best) against every hareid form.

    flock /tmp/hareid-cpu.lock python benchmarks/bench_model.py                 # everything (~20-40 min here)
    python benchmarks/bench_model.py --no-compile                               # eager forms only (~3 min)
    python benchmarks/bench_model.py --threads 1 --cpu-time                     # stable under a loaded machine
    python benchmarks/bench_model.py --quick                                    # smoke test

Tables (median of ``--repeats`` interleaved calls; every contender is timed once per repeat in
rotating order, so load slows all alike; compile time is measured and printed):

1. **Inference**, batch ``--batch`` at 160x64, images/s, each contender's ratio to the peer's best
   and its share of the **bf16 conv ceiling**: a 3x3 128->128 channels_last bf16 convolution on
   ``(batch, 128, 80, 32)`` timed in the same race, GFLOP/s. A contender's GFLOP/s counts HA-CNN's
   nominal FLOPs (convolutions + matmuls as torchreid's HACNN executes them, counted with
   ``torch.utils.flop_counter``: 1.088 GFLOP per 160x64 image) for every row; hareid's factorised
   soft attention executes ~5 % less (1.038).
   Contenders: peer eager (NCHW, bf16 autocast), peer compiled (``torch.compile`` with Inductor
   freezing, channels_last, bf16 autocast: its best form here), hareid ``model.eval()`` under bf16
   autocast, hareid fused (``optimize_for_inference(dtype=bf16)``, eager), hareid fused fp32,
   hareid compiled (``compile=True``), hareid int8 (``quantize_int8``, ONNX Runtime).
2. **Batch-1 latency** (ms) of the eager forms and int8 (compiled forms would need another
   compilation at batch 1 and are left out).
3. **Training step** (forward, label-smoothed CE on both branches, backward, Adam step), bf16
   autocast: peer eager (its own recipe: NCHW, default Adam), peer compiled (channels_last, fused
   Adam), hareid eager (channels_last, fused Adam: the Trainer's default), and with
   ``--compile-train`` hareid compiled; plus what compiling costs per demo epoch (61 iterations).

The CPU model and its ISA flags are printed with the tables. torchreid's HACNN is loaded by file
path (importing the torchreid package needs OpenCV); without torchreid the peer rows are skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import statistics
import sys
import sysconfig
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

from hareid.config import OptimConfig
from hareid.engine.optim import build_optimizer
from hareid.models import build_model
from hareid.models.inference import optimize_for_inference

warnings.filterwarnings("ignore")

NUM_CLASSES = 751
SIZE = (160, 64)
CEILING_SHAPE = (128, 80, 32)  # channels, height, width of the ceiling convolution's input
DEMO_ITERS = 61  # iterations per epoch of `hareid demo` (1947 training images, batch 32)
DEMO_EPOCHS = 6
CL = torch.channels_last


# ------------------------------------------------------------------------------------------- setup
def load_peer() -> ModuleType | None:
    """torchreid's ``hacnn`` module loaded by path, or ``None`` when torchreid is not installed."""
    rel = Path("torchreid") / "reid" / "models" / "hacnn.py"
    spec = importlib.util.find_spec("torchreid")
    roots = [Path(r).parent for r in (spec.submodule_search_locations or [])] if spec else []
    roots.append(Path(sysconfig.get_paths()["purelib"]))
    path = next((r / rel for r in roots if (r / rel).is_file()), None)
    if path is None:
        return None
    mod_spec = importlib.util.spec_from_file_location("_bench_peer_hacnn", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


def cpu_info() -> str:
    """:func:`_machine.machine_line` plus the CPU family/model numbers (which name the generation when
    the model name does not, e.g. "AMD EPYC") and the torch CPU capability in use."""
    from _machine import machine_line

    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, val = line.partition(":")
            fields.setdefault(key.strip(), val.strip())
    except OSError:
        pass
    return (f"{machine_line()}; vendor {fields.get('vendor_id', '?')} family {fields.get('cpu family', '?')} "
            f"model {fields.get('model', '?')}; torch CPU capability {torch.backends.cpu.get_cpu_capability()}")


def gflop_per_image(model: nn.Module, h: int, w: int) -> float:
    """Convolution + matmul GFLOP of one ``h x w`` image (multiply-add = 2 FLOP), eval mode."""
    from torch.utils.flop_counter import FlopCounterMode

    model = copy.deepcopy(model).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, h, w))
    return counter.get_total_flops() / 1e9


def autocast(enabled: bool = True) -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def timed_build(fn: Callable[[], Callable[[], object]]) -> tuple[Callable[[], object], float]:
    """Build a step and call it once (compilation happens here); returns (step, seconds)."""
    t0 = time.perf_counter()
    step = fn()
    step()
    return step, time.perf_counter() - t0


def race(steps: dict[str, Callable[[], object]], repeats: int, warmup: int, clock) -> dict[str, float]:
    """Median seconds per call of each step; steps interleaved, order rotated every repeat."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    names = list(steps)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for n in names[r % len(names):] + names[: r % len(names)]:
            t0 = clock()
            steps[n]()
            times[n].append(clock() - t0)
    return {n: statistics.median(v) for n, v in times.items()}


# ------------------------------------------------------------------------------------------- steps
def infer(model: nn.Module, x: torch.Tensor, bf16: bool = True, freezing: bool = False) -> Callable[[], object]:
    """``model(x)`` under inference mode, in bf16 autocast when ``bf16``; ``freezing``: Inductor
    freezing on (read from the global config when compiling; ``torch.compile(options=...)`` does not
    reach it in torch 2.14)."""
    import torch._inductor.config as inductor_config

    def step() -> None:
        frz = inductor_config.patch(freezing=True) if freezing else contextlib.nullcontext()
        with torch.inference_mode(), autocast(bf16), frz:
            model(x)
    return step


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer,
               forward: nn.Module | None = None) -> Callable[[], object]:
    """Forward (bf16 autocast), label-smoothed CE (eps 0.1) over both branches' logits, backward, step."""
    fwd = forward if forward is not None else model

    def step() -> None:
        model.train()
        with autocast():
            out = fwd(x)
        logits = out["logits"] if isinstance(out, dict) else (list(out) if isinstance(out, (list, tuple)) else [out])
        loss = sum(F.cross_entropy(z.float(), y, label_smoothing=0.1) for z in logits)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def fused_adam(model: nn.Module) -> torch.optim.Optimizer:
    return build_optimizer(model, OptimConfig(name="adam", lr=3e-4))


# ------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=7, help="timed calls per contender (median)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch (and ONNX Runtime) threads; 0 = torch default")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time by the calling thread's CPU time (needs --threads 1): stable on a shared machine")
    ap.add_argument("--no-compile", action="store_true", help="skip every torch.compile contender")
    ap.add_argument("--compile-train", action="store_true", help="also compile hareid's training step (minutes)")
    ap.add_argument("--no-train", action="store_true")
    ap.add_argument("--no-int8", action="store_true")
    ap.add_argument("--quick", action="store_true", help="smoke test: batch 4, 2 repeats, no compile")
    args = ap.parse_args(argv)
    if args.quick:
        args.batch, args.repeats, args.warmup, args.no_compile = 4, 2, 1, True
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cpu_time and torch.get_num_threads() != 1:
        ap.error("--cpu-time needs --threads 1 (other threads' work would not be counted)")
    clock = time.thread_time if args.cpu_time else time.perf_counter
    h, w = SIZE
    b = args.batch
    peer = load_peer()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"{'thread CPU time' if args.cpu_time else 'wall clock'}; batch {b}, {h}x{w}; median of "
          f"{args.repeats} interleaved repeats; peer: {'torchreid 0.2.5 HACNN' if peer else 'not installed'}")
    print(cpu_info(), flush=True)

    torch.manual_seed(0)
    x = torch.randn(b, 3, h, w)
    x_cl = x.contiguous(memory_format=CL)
    y = torch.randint(0, NUM_CLASSES, (b,))
    hareid = build_model("hacnn", num_classes=NUM_CLASSES).eval()
    gflop = gflop_per_image(hareid, h, w)
    peer_model = peer.HACNN(NUM_CLASSES, use_gpu=False).eval() if peer else None
    peer_gflop = gflop_per_image(peer_model, h, w) if peer_model is not None else None
    print(f"nominal work per {h}x{w} image: hareid {gflop:.4f} GFLOP"
          + (f", torchreid HACNN {peer_gflop:.4f} GFLOP" if peer_gflop else "") + " (conv + matmul, 2 FLOP per MAC)")
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731

    # ---------------------------------------------------------------- inference, batch b
    compile_s: dict[str, float] = {}
    steps: dict[str, Callable[[], object]] = {}
    c_in = torch.randn(b, *CEILING_SHAPE).bfloat16().contiguous(memory_format=CL)
    c_w = (torch.randn(128, 128, 3, 3) * 0.05).bfloat16().contiguous(memory_format=CL)

    def ceiling() -> None:
        with torch.inference_mode():
            F.conv2d(c_in, c_w, None, 1, 1)

    ceiling_flop = 2 * b * CEILING_SHAPE[0] * 128 * 9 * CEILING_SHAPE[1] * CEILING_SHAPE[2]
    steps["bf16 conv ceiling (3x3 128->128)"] = ceiling
    if peer_model is not None:
        steps["torchreid HACNN eager (bf16 autocast)"] = infer(peer_model, x)
        if not args.no_compile:
            log("compiling the peer (inference) ...")
            peer_cl = copy.deepcopy(peer_model).to(memory_format=CL)
            compiled_peer = torch.compile(peer_cl)
            steps["torchreid HACNN compiled (channels_last, bf16, freezing)"], compile_s["peer infer"] = timed_build(
                lambda: infer(compiled_peer, x_cl, freezing=True))
            log(f"  {compile_s['peer infer']:.0f} s")
    steps["hareid model.eval() (bf16 autocast)"] = infer(hareid, x)
    fused_bf16 = optimize_for_inference(hareid, dtype=torch.bfloat16)
    steps["hareid fused bf16 (optimize_for_inference)"] = lambda: fused_bf16(x)
    fused_fp32 = optimize_for_inference(hareid, dtype=torch.float32)
    steps["hareid fused fp32"] = lambda: fused_fp32(x)
    if not args.no_compile:
        log("compiling hareid (inference) ...")
        compiled = optimize_for_inference(hareid, dtype=torch.bfloat16, compile=True)
        steps["hareid compiled bf16 (compile=True)"], compile_s["hareid infer"] = timed_build(lambda: lambda: compiled(x))
        log(f"  {compile_s['hareid infer']:.0f} s")
    int8 = None
    if not args.no_int8:
        try:
            from hareid.deploy.quantize import quantize_int8

            t0 = time.perf_counter()
            int8 = quantize_int8(hareid, torch.randn(64, 3, h, w), num_calibration=64)
            compile_s["hareid int8 quantise"] = time.perf_counter() - t0
            steps["hareid int8 (quantize_int8, ONNX Runtime)"] = lambda: int8(x)
        except Exception as exc:  # onnxruntime missing
            log(f"(int8 skipped: {type(exc).__name__}: {exc})")
    log("timing inference ...")
    sec = race(steps, args.repeats, args.warmup, clock)
    ceiling_gflops = ceiling_flop / sec.pop("bf16 conv ceiling (3x3 128->128)") / 1e9
    ips = {n: b / s for n, s in sec.items()}
    peer_keys = [k for k in ips if k.startswith("torchreid")]
    peer_best = max((ips[k] for k in peer_keys), default=None)
    print()
    print(f"### Inference, batch {b}, {h}x{w} (images/s; share = images/s x HA-CNN's nominal GFLOP per image "
          f"over the bf16 conv ceiling of {ceiling_gflops:.0f} GFLOP/s measured in this race)")
    print()
    print("| contender | images/s | vs peer best | share of conv ceiling |")
    print("|---|---:|---:|---:|")
    nominal = peer_gflop or gflop  # HA-CNN's FLOPs as defined (the peer runs them all; hareid skips ~5 %)
    for n, v in ips.items():
        ratio = f"{v / peer_best:.2f}x" if peer_best else ""
        print(f"| {n} | {v:.1f} | {ratio} | {100 * v * nominal / ceiling_gflops:.0f} % |")
    if compile_s:
        print()
        print("Build times (first call, compilation included): "
              + ", ".join(f"{k} {v:.0f} s" for k, v in compile_s.items()))
    hareid_keys = [k for k in ips if k.startswith("hareid") and "int8" not in k and "fp32" not in k]
    best_key = max(hareid_keys, key=ips.get)
    targets = [("bf16 inference: hareid best share of the conv ceiling", ips[best_key] * nominal / ceiling_gflops, 0.80,
                "share")]
    int8_key = next((k for k in ips if "int8" in k), None)
    if int8_key and peer_best:
        targets.append(("int8 vs the peer's best", ips[int8_key] / peer_best, 2.0, "x"))
    if int8_key:
        targets.append((f"int8 vs hareid bf16 best ({best_key})", ips[int8_key] / ips[best_key], 1.5, "x"))

    # ---------------------------------------------------------------- batch-1 latency
    x1 = x[:1].clone()
    lat_steps: dict[str, Callable[[], object]] = {}
    if peer_model is not None:
        lat_steps["torchreid HACNN eager (bf16 autocast)"] = infer(peer_model, x1)
        lat_steps["torchreid HACNN eager (fp32)"] = infer(peer_model, x1, bf16=False)
    lat_steps["hareid fused bf16"] = lambda: fused_bf16(x1)
    lat_steps["hareid fused fp32"] = lambda: fused_fp32(x1)
    if int8 is not None:
        lat_steps["hareid int8"] = lambda: int8(x1)
    log("timing batch-1 latency ...")
    lat = race(lat_steps, max(args.repeats, 15), args.warmup, clock)
    print()
    print("### Batch-1 latency (ms, median)")
    print()
    print("| contender | ms |")
    print("|---|---:|")
    for n, s in lat.items():
        print(f"| {n} | {1e3 * s:.1f} |")

    # ---------------------------------------------------------------- training
    if not args.no_train:
        tsteps: dict[str, Callable[[], object]] = {}
        t_compile: dict[str, float] = {}
        hareid_t = build_model("hacnn", num_classes=NUM_CLASSES).to(memory_format=CL)
        tsteps["hareid eager (channels_last, fused Adam)"] = train_step(hareid_t, x_cl, y, fused_adam(hareid_t))
        if peer is not None:
            peer_t = peer.HACNN(NUM_CLASSES, use_gpu=False)
            tsteps["torchreid HACNN eager (NCHW, Adam)"] = train_step(peer_t, x, y, torch.optim.Adam(peer_t.parameters(), lr=3e-4))
            if not args.no_compile:
                log("compiling the peer (training) ...")
                peer_c = peer.HACNN(NUM_CLASSES, use_gpu=False).to(memory_format=CL)
                fwd = torch.compile(peer_c)
                tsteps["torchreid HACNN compiled (channels_last, fused Adam)"], t_compile["peer train"] = timed_build(
                    lambda: train_step(peer_c, x_cl, y, fused_adam(peer_c), forward=fwd))
                log(f"  {t_compile['peer train']:.0f} s")
        if args.compile_train and not args.no_compile:
            log("compiling hareid (training) ...")
            hareid_c = build_model("hacnn", num_classes=NUM_CLASSES).to(memory_format=CL)
            fwd_h = torch.compile(hareid_c)
            tsteps["hareid compiled (channels_last, fused Adam)"], t_compile["hareid train"] = timed_build(
                lambda: train_step(hareid_c, x_cl, y, fused_adam(hareid_c), forward=fwd_h))
            log(f"  {t_compile['hareid train']:.0f} s")
        log("timing training ...")
        tsec = race(tsteps, args.repeats, 1, clock)
        tips = {n: b / s for n, s in tsec.items()}
        tpeer = max((v for k, v in tips.items() if k.startswith("torchreid")), default=None)
        print()
        print(f"### Training step, bf16 autocast, batch {b}, {h}x{w} (images/s)")
        print()
        print("| contender | images/s | vs peer best | s per demo epoch (61 it.) | compile s |")
        print("|---|---:|---:|---:|---:|")
        for n, v in tips.items():
            comp = next((t for k, t in t_compile.items() if (k.startswith("peer") == n.startswith("torchreid")) and "compiled" in n), None)
            ratio = f"{v / tpeer:.2f}x" if tpeer else ""
            print(f"| {n} | {v:.1f} | {ratio} | {DEMO_ITERS * tsec[n]:.1f} | {f'{comp:.0f}' if comp else ''} |")
        h_best = max((k for k in tips if k.startswith("hareid")), key=tips.get)
        if tpeer:
            targets.append((f"bf16 training step: hareid best ({h_best}) vs peer best", tips[h_best] / tpeer, 2.0, "x"))
        if "hareid train" in t_compile:
            e, c = tsec["hareid eager (channels_last, fused Adam)"], tsec["hareid compiled (channels_last, fused Adam)"]
            demo_e, demo_c = DEMO_EPOCHS * DEMO_ITERS * e, t_compile["hareid train"] + DEMO_EPOCHS * DEMO_ITERS * c
            gain = e - c
            print()
            print(f"Compiling hareid's training step for the demo ({DEMO_EPOCHS} x {DEMO_ITERS} iterations): eager "
                  f"{demo_e:.0f} s vs compiled {demo_c:.0f} s including {t_compile['hareid train']:.0f} s of compilation; "
                  + (f"break-even after {t_compile['hareid train'] / gain:.0f} iterations" if gain > 0 else "compiled is not faster per step"))

    print()
    print("### Targets (issue 26; int8's top-1 agreement: benchmarks/int8_recipe.py)")
    print()
    for what, value, target, kind in targets:
        shown = f"{100 * value:.0f} %" if kind == "share" else f"{value:.2f}x"
        goal = f"{100 * target:.0f} %" if kind == "share" else f"{target}x"
        print(f"- {what}: {shown} (target >= {goal}) {'met' if value >= target else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
