"""Grouped results (one card per person) of `hareid serve`: load time with 10k crops, one client.

    flock /tmp/hareid-cpu.lock python benchmarks/bench_serve_groups.py CKPT [--queries DIR] \
        [--crops 10000] [--per-tracklet 20] [--requests 200]

1. Builds a FAISS flat index of ``--crops`` unit vectors with footage metadata: tracklets of
   ``--per-tracklet`` crops (a random centre + noise each, so a tracklet's crops are neighbours),
   6 cameras, absolute times, frames and boxes (random vectors: the time measured is search,
   grouping and JSON, which do not depend on what the vectors mean).
2. Starts ``hareid serve`` in a subprocess (127.0.0.1, a free port).
3. One client sends the page's request, interleaved with the ungrouped one and a filtered one:
   ``POST /search`` with ``group=tracklet``, ``k=24`` (the page's default), by image upload
   (``--queries DIR``: upload -> decode -> embed -> search -> group -> JSON, the page's whole
   wait) or, without ``--queries``, by gallery id (clicking a gallery image). Reports p50 / p95
   client-side and the server's own ``took_ms``; target: grouped p95 <= 300 ms.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _machine import machine_line
from _proc import stop_group, wait_healthy
from bench_serve import free_port, pct

T0 = 1_700_000_000.0


def build(out: Path, dim: int, crops: int, per: int, seed: int = 0) -> None:
    from hareid.index import FaissIndex

    rng = np.random.default_rng(seed)
    n_tr = -(-crops // per)
    centres = rng.standard_normal((n_tr, dim), dtype=np.float32)
    tr = np.repeat(np.arange(n_tr), per)[:crops]
    x = centres[tr] + 0.6 * rng.standard_normal((crops, dim), dtype=np.float32)
    k = np.arange(crops) % per
    cams = [f"cam{t % 6}" for t in tr]
    start = rng.uniform(0, 3600, n_tr)
    index = FaissIndex(dim, path=out)
    index.add(x, [f"/crops/{i:06d}.jpg" for i in range(crops)], None, cams,
              T0 + start[tr] + 0.4 * k, [f"/videos/cam{t % 6}.mp4" for t in tr],
              tracklets=[f"cam{t % 6}/{t}" for t in tr], frames=(start[tr] * 10).astype(int) + 4 * k,
              boxes=np.column_stack([k, 2 * k, k + 40, 2 * k + 100]).astype(float))
    index.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--queries", default=None, help="folder of query images (default: by gallery id)")
    ap.add_argument("--crops", type=int, default=10_000)
    ap.add_argument("--per-tracklet", type=int, default=20)
    ap.add_argument("--requests", type=int, default=200, help="per variant")
    ap.add_argument("--k", type=int, default=24)
    ap.add_argument("--timeout", type=float, default=900)
    args = ap.parse_args()
    import httpx

    from hareid.index.embedder import load_embedder

    deadline = time.monotonic() + args.timeout
    work = Path(tempfile.mkdtemp(prefix="hareid-bench-groups-"))
    dim = load_embedder(args.checkpoint, device="cpu").dim
    t = time.perf_counter()
    build(work / "idx", dim, args.crops, args.per_tracklet)
    print(machine_line())
    print(f"gallery: {args.crops} crops in {-(-args.crops // args.per_tracklet)} tracklets of "
          f"{args.per_tracklet}, 6 cameras, {dim}-d, FAISS flat; built in "
          f"{time.perf_counter() - t:.1f} s")
    images = sorted(p for p in Path(args.queries).rglob("*") if p.suffix.lower() in
                    (".jpg", ".png")) if args.queries else []
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "hareid", "serve", args.checkpoint,
                               "--gallery", str(work / "idx"), "--port", str(port), "--device",
                               "cpu", "--quiet"], env={**os.environ, "PYTHONUNBUFFERED": "1"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                              start_new_session=True)
    rng = np.random.default_rng(1)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
            wait_healthy(c, server, deadline, poll_s=0.3)
            variants = {
                "grouped (group=tracklet)": {"group": "tracklet"},
                "grouped + 2 cameras + 20 min window": {
                    "group": "tracklet", "camera": ["cam1", "cam2"],
                    "time_min": str(T0 + 600), "time_max": str(T0 + 1800)},
                "ungrouped (crops)": {},
            }
            lat: dict[str, list[float]] = {v: [] for v in variants}
            took: dict[str, list[float]] = {v: [] for v in variants}
            depth = None

            def ask(form: dict) -> httpx.Response:
                data = {"k": str(args.k), **form}
                if images:
                    p = images[int(rng.integers(len(images)))]
                    return c.post("/search", data=data,
                                  files={"image": (p.name, p.read_bytes(), "image/jpeg")})
                return c.post("/search", data={**data, "gallery_id": str(int(rng.integers(args.crops)))})

            for form in variants.values():  # warm-up
                for _ in range(3):
                    ask(form).raise_for_status()
            for _ in range(args.requests):
                for name, form in variants.items():
                    t0 = time.perf_counter()
                    r = ask(form)
                    lat[name].append(1e3 * (time.perf_counter() - t0))
                    r.raise_for_status()
                    body = r.json()
                    took[name].append(body["took_ms"])
                    depth = body["depth"] or depth
            t0 = time.perf_counter()
            c.get("/gallery/facets").raise_for_status()
            facets_ms = 1e3 * (time.perf_counter() - t0)
        how = "image upload (embed included)" if images else "gallery id"
        print(f"\none client, {args.requests} requests per variant, interleaved; query by {how}; "
              f"k = {args.k}; groups from the top {depth} crops\n")
        print("| request | p50 (ms) | p95 (ms) | server p50 (ms) | server p95 (ms) |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for name in variants:
            print(f"| {name} | {pct(lat[name], 50):.1f} | {pct(lat[name], 95):.1f} | "
                  f"{pct(took[name], 50):.1f} | {pct(took[name], 95):.1f} |")
        print(f"\nGET /gallery/facets: {facets_ms:.1f} ms; target grouped p95 <= 300 ms: "
              f"{'met' if pct(lat['grouped (group=tracklet)'], 95) <= 300 else 'MISSED'}")
    finally:
        stop_group(server, 30)
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
