"""Time to CMC + mAP on a Market-1501-sized problem: hareid vs torchreid (python and Cython).

    python benchmarks/bench_eval.py [--repeats 5] [--peer-python-queries 300]

Problem: 3368 queries x 15913 gallery (13115 images of 751 identities + 2798 distractors),
6 cameras, 1024-d features = identity centre (scale 0.37) + unit gaussian noise, L2-normalised
(mAP ~75%, rank-1 ~98%: not saturated), squared euclidean.
Runs are interleaved (hareid, Cython, hareid, ...) and the median is reported: the CPU is shared.
torchreid's python path is timed on the first ``--peer-python-queries`` queries and extrapolated
linearly (its cost is per query after one argsort); the table says so. torchreid's Cython module
is not in its wheel: point ``HAREID_PEER_RANK_CY`` at ``rank_cy.pyx`` from a torchreid source
checkout (built into a temp dir with Cython); otherwise that row is skipped.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _peer_rank import load_peer_cython, load_peer_rank

from hareid.evaluate.distance import pairwise_distance
from hareid.evaluate.metrics import evaluate_rank


def market_like(seed: int = 0, num_q: int = 3368, num_g: int = 15913, ids: int = 751,
                cams: int = 6, dim: int = 1024, distractors: int = 2798,
                centre_scale: float = 0.37):
    rng = np.random.default_rng(seed)
    centres = centre_scale * rng.normal(size=(ids, dim)).astype(np.float32)
    q_pids = np.r_[np.arange(ids), rng.integers(0, ids, num_q - ids)]
    g_pids = np.r_[np.arange(ids), rng.integers(0, ids, num_g - distractors - ids)]
    qf = centres[q_pids] + rng.normal(size=(num_q, dim)).astype(np.float32)
    gf = centres[g_pids] + rng.normal(size=(len(g_pids), dim)).astype(np.float32)
    gf = np.vstack([gf, rng.normal(size=(distractors, dim)).astype(np.float32)])
    g_pids = np.r_[g_pids, np.zeros(distractors, dtype=np.int64) - 0]  # pid 0: distractors
    g_pids[: num_g - distractors] += 1  # real identities 1..751
    q_pids = q_pids + 1
    q_cams, g_cams = rng.integers(0, cams, num_q), rng.integers(0, cams, num_g)
    qf /= np.linalg.norm(qf, axis=1, keepdims=True)
    gf /= np.linalg.norm(gf, axis=1, keepdims=True)
    return qf, gf, q_pids, g_pids, q_cams, g_cams


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--peer-python-queries", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-uniform", dest="uniform", action="store_false",
                    help="skip the worst case (uniform random distances)")
    args = ap.parse_args()

    qf, gf, q_pids, g_pids, q_cams, g_cams = market_like(args.seed)
    t_dist, distmat = timed(lambda: pairwise_distance(qf, gf))
    num_q, num_g = distmat.shape
    print(f"problem: {num_q} queries x {num_g} gallery, {len(np.unique(q_pids))} ids, 6 cams; "
          f"distances {t_dist:.2f} s ({distmat.nbytes / 2**20:.0f} MiB float32)")

    peer, cy = load_peer_rank(), load_peer_cython()
    labels = (q_pids, g_pids, q_cams, g_cams)
    uniform = np.random.default_rng(args.seed + 1).random(distmat.shape, dtype=np.float32)
    times: dict[str, list[float]] = {"hareid": [], "cython": [], "hareid_u": [], "cython_u": []}
    ours = cy_out = ours_u = cy_u = None
    for _ in range(args.repeats):  # interleaved
        t, ours = timed(lambda: evaluate_rank(distmat, *labels))
        times["hareid"].append(t)
        if cy is not None:
            t, cy_out = timed(lambda: cy.evaluate_cy(distmat, *labels, 50))
            times["cython"].append(t)
        if args.uniform:
            t, ours_u = timed(lambda: evaluate_rank(uniform, *labels))
            times["hareid_u"].append(t)
            if cy is not None:
                t, cy_u = timed(lambda: cy.evaluate_cy(uniform, *labels, 50))
                times["cython_u"].append(t)

    rows = []
    t_h = statistics.median(times["hareid"])
    rows.append(("hareid evaluate_rank", t_h, "measured, full", ours.mAP, ours.cmc[0]))
    if cy_out is not None:
        cmc_c, map_c = cy_out
        np.testing.assert_allclose(ours.cmc, cmc_c, atol=1e-5)
        assert abs(ours.mAP - map_c) < 1e-5, (ours.mAP, map_c)
        rows.append(("torchreid Cython (evaluate_cy)", statistics.median(times["cython"]),
                     "measured, full", float(map_c), float(cmc_c[0])))
    if peer is not None:
        n = min(args.peer_python_queries, num_q)
        sub = (distmat[:n], q_pids[:n], g_pids, q_cams[:n], g_cams)
        t_p, (cmc_p, map_p) = timed(lambda: peer.evaluate_rank(*sub, use_cython=False))
        ours_sub = evaluate_rank(*sub)
        np.testing.assert_allclose(ours_sub.cmc, cmc_p, atol=1e-6)
        assert abs(ours_sub.mAP - map_p) < 1e-6
        rows.append(("torchreid python (eval_market1501)", t_p * num_q / n,
                     f"{n} queries x {num_q / n:.1f}", float("nan"), float("nan")))
    print()
    print(f"| {'evaluation':34s} | {'time (s)':>9s} | {'vs hareid':>9s} | {'how':22s} | "
          f"{'mAP':>8s} | {'rank-1':>7s} |")
    print(f"|{'-' * 36}|{'-' * 11}|{'-' * 11}|{'-' * 24}|{'-' * 10}|{'-' * 9}|")
    for name, t, how, m, r1 in rows:
        ms = "same" if np.isnan(m) else f"{100 * m:.3f}"
        rs = "same" if np.isnan(r1) else f"{100 * r1:.2f}"
        print(f"| {name:34s} | {t:9.3f} | {t / t_h:8.1f}x | {how:22s} | {ms:>8s} | {rs:>7s} |")
    if args.uniform:
        t_hu = statistics.median(times["hareid_u"])
        print("\nworst case for hareid: uniform random distances (matches anywhere, full row sorts)")
        print(f"| hareid {t_hu:.3f} s", end="")
        if cy_u is not None:
            np.testing.assert_allclose(ours_u.cmc, cy_u[0], atol=1e-5)
            assert abs(ours_u.mAP - cy_u[1]) < 1e-5
            t_cu = statistics.median(times["cython_u"])
            print(f" | Cython {t_cu:.3f} s | {t_cu / t_hu:.1f}x | same numbers", end="")
        print(" |")
    print(f"\nhareid runs: {', '.join(f'{t:.3f}' for t in times['hareid'])} s")
    if times["cython"]:
        print(f"Cython runs: {', '.join(f'{t:.3f}' for t in times['cython'])} s")
    else:
        print("torchreid Cython: not buildable here (set HAREID_PEER_RANK_CY=path/to/rank_cy.pyx)")
    print("numbers asserted equal: hareid vs Cython (1e-5, its float32 sums), "
          "hareid vs python on the timed subset (1e-6)")


if __name__ == "__main__":
    main()
