"""Model speed: hareid HA-CNN against torchreid's HACNN, interleaved, in fp32 and under bf16 autocast.

    python benchmarks/bench_model.py                      # batch 32, 160x64 and 256x128, 5 repeats
    python benchmarks/bench_model.py --compile            # adds torch.compile'd hareid (~1 min per setting)
    python benchmarks/bench_model.py --quick              # smoke test: batch 4, 2 repeats, 160x64

Prints a markdown table of images/s (median over ``--repeats``) for

* a training step: forward, label-smoothed cross-entropy on both branches' logits, backward, Adam step;
* inference: torchreid's HACNN (NCHW; it supports 160x64 only), hareid's plain ``model.eval()``
  forward, hareid fused (:func:`hareid.export.optimize_for_inference`: BN folded, channels_last) and,
  with ``--compile``, hareid fused + ``torch.compile``;

with every contender timed once per repeat in rotating order (interleaved: a busy machine slows all
of them alike), and the ratio to the peer in the same setting. Then checks that retrieval is unchanged
under bf16: the same hareid model embeds the synthetic benchmark's query/gallery images (or a fixed
random set) in fp32 and under bf16 autocast; reports the fraction of queries whose top-10 gallery
ranking is identical, the largest embedding difference, and rank-1/mAP in both.

torchreid's HACNN is loaded by file path (importing the torchreid package needs OpenCV); without
torchreid the peer rows are skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import platform
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

from hareid.export import optimize_for_inference
from hareid.models import build_model

warnings.filterwarnings("ignore")

NUM_CLASSES = 751
PEER_SIZE = (160, 64)
DTYPES = {"fp32": None, "bf16": torch.bfloat16}


# ------------------------------------------------------------------------------------------- peer
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


# ------------------------------------------------------------------------------------------- steps
def autocast(dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", dtype=dtype) if dtype is not None else contextlib.nullcontext()


def logits_of(out: object) -> list[torch.Tensor]:
    if isinstance(out, dict):
        return list(out["logits"])
    return list(out) if isinstance(out, (tuple, list)) else [out]


def make_train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype | None) -> Callable[[], None]:
    """One training step: forward, label-smoothed CE (eps 0.1) summed over branches, backward, Adam."""
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)

    def step() -> None:
        model.train()
        with autocast(dtype):
            out = model(x)
        loss = sum(F.cross_entropy(z.float(), y, label_smoothing=0.1) for z in logits_of(out))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def make_infer_step(model: nn.Module, x: torch.Tensor, dtype: torch.dtype | None) -> Callable[[], None]:
    def step() -> None:
        with torch.inference_mode(), autocast(dtype):
            model(x)

    return step


def race(steps: dict[str, Callable[[], None]], repeats: int, warmup: int) -> dict[str, float]:
    """Median seconds per call of each step; steps interleaved, order rotated every repeat."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    names = list(steps)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for n in names[r % len(names):] + names[: r % len(names)]:
            t0 = time.perf_counter()
            steps[n]()
            times[n].append(time.perf_counter() - t0)
    return {n: statistics.median(v) for n, v in times.items()}


# ------------------------------------------------------------------------------------------- retrieval
def retrieval_set(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor, dict[str, object], str]:
    """Query and gallery image batches (160x64) plus ids: the synthetic benchmark, else random images."""
    h, w = PEER_SIZE
    try:
        from hareid.data.loader import ImageDataset
        from hareid.data.synthetic import load_synthetic, write_synthetic
        from hareid.data.transforms import build_transforms

        n_ids = 8 if args.quick else 60
        root = write_synthetic(args.synthetic_root, num_train_ids=2, num_test_ids=n_ids, images_per_id=8,
                               num_distractors=0, num_junk=0, height=h, width=w, progress=False)
        ds = load_synthetic(root)
        _, eval_tf = build_transforms(h, w)

        def stack(records):
            items = [ImageDataset(records, eval_tf)[i] for i in range(len(records))]
            ids = {"pids": [it[1] for it in items], "camids": [it[2] for it in items]}
            return torch.stack([it[0] for it in items]), ids

        q, qi = stack(ds.query)
        g, gi = stack(ds.gallery)
        ids = {"q_pids": qi["pids"], "q_camids": qi["camids"], "g_pids": gi["pids"], "g_camids": gi["camids"]}
        return q, g, ids, f"synthetic benchmark ({len(q)} queries, {len(g)} gallery, {h}x{w})"
    except Exception as exc:  # no data module / rendering failed: fixed random set
        gen = torch.Generator().manual_seed(0)
        nq, ng = (16, 64) if args.quick else (100, 400)
        print(f"(retrieval set: synthetic benchmark unavailable: {type(exc).__name__}: {exc})", file=sys.stderr)
        q = torch.randn(nq, 3, h, w, generator=gen)
        g = torch.randn(ng, 3, h, w, generator=gen)
        return q, g, {}, f"fixed random images ({nq} queries, {ng} gallery, {h}x{w})"


def calibrate_bn(model: nn.Module, images: torch.Tensor, batch: int = 32) -> None:
    """Set BN running statistics from ``images`` (cumulative average, no gradients), so an untrained
    model normalises like a trained one instead of with the identity statistics of a fresh net."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for i in range(0, len(images) - 1, batch):
            model(images[i:i + batch])
    for m, mom in zip(bns, saved):
        m.momentum = mom
    model.eval()


def embed(model: nn.Module, images: torch.Tensor, dtype: torch.dtype | None, batch: int = 64) -> torch.Tensor:
    with torch.inference_mode(), autocast(dtype):
        return torch.cat([model(images[i:i + batch]).float() for i in range(0, len(images), batch)])


def retrieval_check(args: argparse.Namespace) -> list[str]:
    q, g, ids, what = retrieval_set(args)
    torch.manual_seed(0)
    model = build_model("hacnn", num_classes=NUM_CLASSES)
    if args.checkpoint:
        from hareid.checkpoint import load_checkpoint

        ckpt = load_checkpoint(args.checkpoint)
        model = build_model(**ckpt["model"]) if "model" in ckpt else model
        model.load_state_dict(ckpt["state_dict"])
        model.eval()
        source = f"checkpoint {args.checkpoint}"
    else:
        calibrate_bn(model, torch.cat([g, q]))
        source = "random init, BN statistics calibrated on the set"
    fused = optimize_for_inference(model)
    feats = {k: (embed(fused, q, dt), embed(fused, g, dt)) for k, dt in DTYPES.items()}
    dists = {k: torch.cdist(qf, gf) for k, (qf, gf) in feats.items()}
    k = min(10, g.shape[0])
    top = {n: d.topk(k, dim=1, largest=False).indices for n, d in dists.items()}
    same10 = (top["fp32"] == top["bf16"]).all(dim=1).float().mean().item()
    same1 = (top["fp32"][:, 0] == top["bf16"][:, 0]).float().mean().item()
    max_diff = max((feats["fp32"][i] - feats["bf16"][i]).abs().max().item() for i in range(2))
    lines = [
        f"Retrieval under bf16 ({what}; hareid fused, {source}):",
        "",
        "| metric | fp32 | bf16 |",
        "|---|---|---|",
    ]
    with contextlib.suppress(Exception):
        if ids:
            from hareid.evaluate.metrics import evaluate_rank

            res = {n: evaluate_rank(d.numpy(), ids["q_pids"], ids["g_pids"], ids["q_camids"], ids["g_camids"])
                   for n, d in dists.items()}
            lines.append(f"| rank-1 | {res['fp32'].cmc[0]:.4f} | {res['bf16'].cmc[0]:.4f} |")
            lines.append(f"| mAP | {res['fp32'].mAP:.4f} | {res['bf16'].mAP:.4f} |")
    lines += [
        "",
        f"- queries with identical top-{k} ranking (fp32 vs bf16): {same10:.1%} ({len(q)} queries)",
        f"- queries with identical top-1: {same1:.1%}",
        f"- max |embedding fp32 - bf16| (unit-norm branches): {max_diff:.4f}",
    ]
    return lines


# ------------------------------------------------------------------------------------------- main
def parse_size(text: str) -> tuple[int, int]:
    h, _, w = text.lower().partition("x")
    return int(h), int(w)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["160x64", "256x128"], help="HxW input sizes")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per contender (median)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd fused hareid (slow to build)")
    ap.add_argument("--no-train", action="store_true", help="inference only")
    ap.add_argument("--no-retrieval", action="store_true", help="skip the fp32-vs-bf16 retrieval check")
    ap.add_argument("--checkpoint", help="hareid checkpoint for the retrieval check (default: random init)")
    ap.add_argument("--synthetic-root", default="/tmp/hareid_bench_synthetic", help="cache of the retrieval set")
    ap.add_argument("--quick", action="store_true", help="smoke test: batch 4, 2 repeats, 1 warm-up, 160x64")
    args = ap.parse_args(argv)
    if args.quick:
        args.batch, args.repeats, args.warmup, args.sizes = 4, 2, 1, ["160x64"]

    peer = load_peer()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}; "
          f"batch {args.batch}, median of {args.repeats} interleaved repeats; peer: "
          f"{'torchreid ' + 'HACNN' if peer else 'not installed'}", flush=True)
    rows: list[tuple[str, str, str, str, float | None, float | None]] = []
    ratios: dict[tuple[str, str, str], float] = {}
    t_start = time.perf_counter()
    for size_text in args.sizes:
        h, w = parse_size(size_text)
        size = f"{h}x{w}"
        torch.manual_seed(0)
        x = torch.randn(args.batch, 3, h, w)
        y = torch.randint(0, NUM_CLASSES, (args.batch,))
        hareid = build_model("hacnn", num_classes=NUM_CLASSES)
        peer_model = peer.HACNN(NUM_CLASSES, use_gpu=False) if peer and (h, w) == PEER_SIZE else None
        fused = optimize_for_inference(hareid)
        for dname in args.dtypes:
            dtype = DTYPES[dname]
            modes = [] if args.no_train else ["train"]
            for mode in [*modes, "inference"]:
                steps: dict[str, Callable[[], None]] = {}
                if mode == "train":
                    if peer_model is not None:
                        steps["torchreid HACNN"] = make_train_step(peer_model, x, y, dtype)
                    steps["hareid"] = make_train_step(hareid, x, y, dtype)
                else:
                    if peer_model is not None:
                        peer_model.eval()
                        steps["torchreid HACNN"] = make_infer_step(peer_model, x, dtype)
                    hareid.eval()
                    steps["hareid eval()"] = make_infer_step(hareid, x, dtype)
                    steps["hareid fused"] = make_infer_step(fused, x, dtype)
                    if args.compile:
                        t0 = time.perf_counter()
                        compiled = optimize_for_inference(hareid, compile=True)
                        make_infer_step(compiled, x, dtype)()  # build outside the race
                        print(f"  compile {size} {dname}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
                        steps["hareid fused+compile"] = make_infer_step(compiled, x, dtype)
                sec = race(steps, args.repeats, args.warmup)
                ips = {n: args.batch / s for n, s in sec.items()}
                base = ips.get("torchreid HACNN")
                if base is None and peer is not None:
                    rows.append((mode, size, dname, "torchreid HACNN", None, None))
                for n, v in ips.items():
                    ratio = v / base if base and not n.startswith("torchreid") else None
                    rows.append((mode, size, dname, n, v, ratio))
                    if ratio is not None:
                        ratios[(mode, size, dname, n)] = ratio
                print(f"  {mode} {size} {dname}: " + ", ".join(f"{n} {v:.1f}" for n, v in ips.items())
                      + f"  [{time.perf_counter() - t_start:.0f} s]", file=sys.stderr, flush=True)

    print()
    print("| mode | size | dtype | contender | images/s | hareid / peer |")
    print("|---|---|---|---|---:|---:|")
    for mode, size, dname, name, v, ratio in rows:
        val = f"{v:.1f}" if v is not None else f"n/a ({PEER_SIZE[0]}x{PEER_SIZE[1]} only)"
        print(f"| {mode} | {size} | {dname} | {name} | {val} | {f'{ratio:.2f}x' if ratio else ''} |")

    targets = [("train", "bf16", "hareid", 2.0), ("inference", "bf16", "hareid eval()", 3.0),
               ("train", "fp32", "hareid", 1.3), ("inference", "fp32", "hareid eval()", 1.3)]
    size = f"{PEER_SIZE[0]}x{PEER_SIZE[1]}"
    found = [(m, d, n, t, ratios[(m, size, d, n)]) for m, d, n, t in targets if (m, size, d, n) in ratios]
    if found:
        print()
        print(f"Targets (issue 2, {size}, plain model.eval() / train step vs the peer in the same dtype):")
        for m, d, _n, t, r in found:
            print(f"- {m} {d}: {r:.2f}x (target >= {t}x) {'met' if r >= t else 'MISSED'}")
    if not args.no_retrieval:
        print()
        print("\n".join(retrieval_check(args)))
    print(f"\n(total {time.perf_counter() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
