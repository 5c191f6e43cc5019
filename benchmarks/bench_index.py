"""Gallery index benchmark: search latency, recall@10 against exact search, memory, filters,
durable inserts, and milvus-lite beside FAISS.

    flock /tmp/hareid-cpu.lock python benchmarks/bench_index.py --sizes 100000 1000000
    python benchmarks/bench_index.py --sizes 20000 --queries 100          # a quick look

Vectors: 1024-d unit vectors shaped like re-ID embeddings (low intrinsic dimension: a 64-d latent
mapped to 1024-d, plus a little noise; identities of 5 images), so the exact top-10 is a ranking,
not a tie among noise; queries are new views of gallery identities (a gallery vector plus noise).
Ground truth is exact inner product (numpy, chunked). Memory is the size of the FAISS structures
(the index serialised), per million vectors; RSS of the whole process is printed per size.

Per size, on :class:`hareid.index.FaissIndex` (FAISS + SQLite metadata; ``index.search`` is the
full path the server uses, metadata included):
  1. flat (exact), IVF-Flat and IVF-PQ: build time, memory (RSS growth per million vectors),
     single-query latency p50 / p95 (one query at a time, as a server sees them) and recall@10
     for several ``nprobe``;
  2. filters (camera / time in SQL) at selectivities 50 % .. 0.1 %: the "prefilter" strategy
     (SQL ids -> FAISS IDSelector, all IVF lists visited), the "postfilter" strategy (over-fetch
     k * N / matches * 2, keep what SQL accepts) and "auto" (what the index does);
  3. (``--durable``) inserts into an on-disk index in transactions of 1000, snapshot, reopen;
  4. (``--milvus N``) milvus-lite with the same vectors (insert, latency, recall, a filter).
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _machine import cpu_model

from hareid.index import FaissIndex, Filter, MilvusIndex

CAMERAS = 10




def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def gallery_vectors(n: int, dim: int, seed: int = 0, latent: int = 64) -> np.ndarray:
    """(n, dim) float32 unit rows shaped like re-ID embeddings: a low intrinsic dimension
    (``latent``), identities of 5 images each, a little isotropic noise."""
    g = torch.Generator().manual_seed(seed)
    ids = max(1, n // 5)
    mix = torch.randn(latent, dim, generator=g) / latent**0.5  # latent -> embedding space
    id_latent = torch.randn(ids, latent, generator=g)
    out = np.empty((n, dim), np.float32)
    for i in range(0, n, 100_000):
        j = min(n, i + 100_000)
        z = id_latent[torch.arange(i, j) % ids] + 0.45 * torch.randn(j - i, latent, generator=g)
        x = z @ mix + 0.05 * torch.randn(j - i, dim, generator=g)
        out[i:j] = torch.nn.functional.normalize(x, dim=1).numpy()
    return out


def queries_for(gallery: np.ndarray, q: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(gallery), size=q, replace=False)
    x = gallery[picks] + (0.9 / np.sqrt(gallery.shape[1])) * rng.standard_normal(
        (q, gallery.shape[1])).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def exact_topk(gallery: np.ndarray, queries: np.ndarray, k: int,
               allowed: np.ndarray | None = None) -> np.ndarray:
    """Exact top-k ids by inner product (chunked over the gallery)."""
    best_s = np.full((len(queries), k), -np.inf, np.float32)
    best_i = np.full((len(queries), k), -1, np.int64)
    for start in range(0, len(gallery), 200_000):
        s = queries @ gallery[start : start + 200_000].T  # (Q, chunk)
        if allowed is not None:
            s[:, ~allowed[start : start + 200_000]] = -np.inf
        top = np.argpartition(-s, min(k, s.shape[1] - 1), axis=1)[:, :k]
        cand_s = np.concatenate([best_s, np.take_along_axis(s, top, 1)], 1)
        cand_i = np.concatenate([best_i, top + start], 1)
        order = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)
    best_i[~np.isfinite(best_s)] = -1
    return best_i


def recall(got: list[np.ndarray], truth: np.ndarray, k: int) -> float:
    vals = []
    for g, t in zip(got, truth):
        t = t[t >= 0][:k]
        if len(t):
            vals.append(len(np.intersect1d(g[:k], t)) / len(t))
    return float(np.mean(vals)) if vals else float("nan")


SEARCH_THREADS = 1


def timed_search(index, queries: np.ndarray, k: int, flt: Filter | None = None,
                 offset_id: int = 0) -> tuple[float, float, list[np.ndarray]]:
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(SEARCH_THREADS)
    lat, got = [], []
    try:
        for q in queries:
            t = time.perf_counter()
            r = index.search(q[None], k, filter=flt)[0]
            lat.append(time.perf_counter() - t)
            got.append(r.ids - offset_id)
    finally:
        faiss.omp_set_num_threads(threads)
    lat_ms = np.asarray(lat) * 1e3
    return float(np.percentile(lat_ms, 50)), float(np.percentile(lat_ms, 95)), got


def row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def metadata(n: int) -> dict:
    idx = np.arange(n)
    return {"cameras": [f"c{i % CAMERAS}" for i in idx], "times": idx.astype(float),
            "sources": ["a" if i % 2 else "b" for i in idx]}


def filters(n: int) -> list[tuple[str, Filter, np.ndarray]]:
    idx = np.arange(n)
    cam = idx % CAMERAS
    out = []
    for label, cams, lo, hi in [("50 %", [f"c{c}" for c in range(5)], None, None),
                                ("10 %", ["c3"], None, None),
                                ("1 %", ["c3"], 0.0, n * 0.1 - 1),
                                ("0.1 %", ["c3"], 0.0, n * 0.01 - 1)]:
        allowed = np.isin(cam, [int(c[1:]) for c in cams])
        if lo is not None:
            allowed &= (idx >= lo) & (idx <= hi)
        out.append((f"{label} ({allowed.sum()} items)", Filter(cameras=cams, time_min=lo, time_max=hi),
                    allowed))
    return out


def build(kind: str, gallery: np.ndarray, meta: dict, nlist: int, pq_m: int) -> tuple[FaissIndex, float]:
    t = time.perf_counter()
    index = FaissIndex(gallery.shape[1], kind=kind, nlist=nlist, pq_m=pq_m,
                       train_size=min(len(gallery), 64 * nlist) if kind != "flat" else None,
                       prefilter_max=20_000)
    for i in range(0, len(gallery), 100_000):
        index.add(gallery[i : i + 100_000], None, None, meta["cameras"][i : i + 100_000],
                  meta["times"][i : i + 100_000], meta["sources"][i : i + 100_000])
    return index, time.perf_counter() - t


def index_mib(index: FaissIndex, tmp: str | None) -> float:
    """Size of the FAISS structures (vectors or codes, ids, centroids, id map): the index written
    to a file. In memory add ~40 B per vector for the id hash map (unordered_map)."""
    import faiss

    fd, name = tempfile.mkstemp(suffix=".faiss", dir=tmp)
    os.close(fd)
    try:
        faiss.write_index(index.index, name)
        return os.path.getsize(name) / 2**20
    finally:
        os.unlink(name)


def bench_size(n: int, args: argparse.Namespace) -> None:
    k = args.k
    t = time.perf_counter()
    gallery = gallery_vectors(n, args.dim)
    queries = queries_for(gallery, args.queries)
    truth = exact_topk(gallery, queries, k)
    meta = metadata(n)
    print(f"\n## {n} vectors x {args.dim}-d ({gallery.nbytes / 2**30:.2f} GiB float32), "
          f"{args.queries} single queries, k = {k}; data + ground truth in {time.perf_counter() - t:.0f} s\n")
    nlist = args.nlist or int(2 ** round(np.log2(max(64, 4 * np.sqrt(n)))))
    print(row("index", "build (s)", "nprobe", "p50 (ms)", "p95 (ms)", "recall@10", "recall@1",
              "memory (MiB / 1M vectors)"))
    print(row(*["---"] * 8))
    ivf_index = None
    for kind, nprobes in [("flat", [None]), ("ivf", args.nprobes), ("ivfpq", args.nprobes)]:
        index, took = build(kind, gallery, meta, nlist, args.pq_m)
        label = {"flat": "flat (exact)", "ivf": f"IVF{nlist},Flat",
                 "ivfpq": f"IVF{nlist},PQ{args.pq_m}x8"}[kind]
        lines = []
        for nprobe in nprobes:
            if nprobe is not None:
                index.nprobe = nprobe
            qs = queries[: args.flat_queries] if kind == "flat" else queries
            p50, p95, got = timed_search(index, qs, k)
            r10 = recall(got, truth[: len(qs)], 10)
            r1 = float(np.mean([g[0] == tr[0] for g, tr in zip(got, truth)]))
            lines.append([label, f"{took:.1f}", nprobe or "-", f"{p50:.2f}", f"{p95:.2f}",
                          f"{r10:.3f}", f"{r1:.3f}", ""])
        lines[0][-1] = f"{index_mib(index, args.tmp) / n * 1e6:.0f}"
        if kind == "ivf":
            ivf_index = index
        else:
            index.close()
            del index
        for i, cells in enumerate(lines):
            if i:
                cells[0] = cells[1] = ""
            print(row(*cells), flush=True)
        gc.collect()

    print(f"\nFilters on IVF{nlist},Flat (nprobe {args.filter_nprobe}), SQL over camera/time; "
          "recall@10 against the exact filtered top-10:\n")
    print(row("filter (selectivity)", "strategy", "p50 (ms)", "p95 (ms)", "recall@10"))
    print(row(*["---"] * 5))
    ivf_index.nprobe = args.filter_nprobe
    fq = queries[: args.filter_queries]
    for label, flt, allowed in filters(n):
        ftruth = exact_topk(gallery, fq, k, allowed)
        for strategy in ("prefilter", "postfilter", "auto"):
            ivf_index.filter_strategy = strategy
            p50, p95, got = timed_search(ivf_index, fq, k, flt)
            print(row(label, strategy, f"{p50:.2f}", f"{p95:.2f}", f"{recall(got, ftruth, k):.3f}"),
                  flush=True)
            label = ""
    ivf_index.close()
    del ivf_index
    gc.collect()
    print(f"\nprocess RSS now {rss_mib():.0f} MiB (peak {peak_rss_mib():.0f} MiB)")

    if args.durable and n <= args.durable:
        bench_durable(gallery, meta, args)
    if args.milvus and n <= args.milvus:
        bench_milvus(gallery, meta, queries, truth, args)


def bench_durable(gallery: np.ndarray, meta: dict, args: argparse.Namespace) -> None:
    folder = Path(tempfile.mkdtemp(prefix="hareid-bench-", dir=args.tmp))
    n = len(gallery)
    try:
        index = FaissIndex(gallery.shape[1], path=folder / "idx")
        t = time.perf_counter()
        for i in range(0, n, 1000):
            index.add(gallery[i : i + 1000], [f"img/{j}.jpg" for j in range(i, min(n, i + 1000))],
                      None, meta["cameras"][i : i + 1000], meta["times"][i : i + 1000],
                      meta["sources"][i : i + 1000])
        add_s = time.perf_counter() - t
        t = time.perf_counter()
        index.close()
        close_s = time.perf_counter() - t
        sqlite_mib = (folder / "idx" / "gallery.sqlite").stat().st_size / 2**20
        snap_mib = sum(f.stat().st_size for f in (folder / "idx").glob("index.*.faiss")) / 2**20
        t = time.perf_counter()
        again = FaissIndex.open(folder / "idx")
        open_s = time.perf_counter() - t
        assert len(again) == n
        again.close()
        print(f"\nDurable flat index on disk ({args.tmp or tempfile.gettempdir()}): {n} vectors "
              f"added in transactions of 1000 in {add_s:.1f} s ({n / add_s:.0f} vectors/s, each "
              f"commit fsynced; snapshots included), final snapshot {close_s:.1f} s, reopen "
              f"{open_s:.2f} s; SQLite (metadata, paths) {sqlite_mib / n * 1e6:.0f} MiB per 1M "
              f"items, snapshot {snap_mib / n * 1e6:.0f} MiB per 1M vectors")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def bench_milvus(gallery: np.ndarray, meta: dict, queries: np.ndarray, truth: np.ndarray,
                 args: argparse.Namespace) -> None:
    folder = Path(tempfile.mkdtemp(prefix="hareid-milvus-", dir=args.tmp))
    n = len(gallery)
    try:
        print(f"\nmilvus-lite ({n} vectors, same data):\n")
        print(row("index", "insert (s)", "filter", "p50 (ms)", "p95 (ms)", "recall@10"))
        print(row(*["---"] * 6))
        for kind in args.milvus_kinds:
            index = MilvusIndex(folder / f"{kind}.db", gallery.shape[1], kind=kind,
                                nlist=args.nlist or 1024, nprobe=args.filter_nprobe)
            t = time.perf_counter()
            ids = index.add(gallery, None, None, meta["cameras"], meta["times"], meta["sources"])
            index.flush()  # milvus-lite searches unflushed rows without an index (slow)
            took = time.perf_counter() - t
            first = int(ids[0])
            qs = queries[: args.milvus_queries]
            p50, p95, got = timed_search(index, qs, args.k, offset_id=first)
            print(row(kind, f"{took:.1f}", "none", f"{p50:.2f}", f"{p95:.2f}",
                      f"{recall(got, truth[: len(qs)], 10):.3f}"), flush=True)
            label, flt, allowed = filters(n)[2]
            ftruth = exact_topk(gallery, qs, args.k, allowed)
            p50, p95, got = timed_search(index, qs, args.k, flt, offset_id=first)
            print(row("", "", label, f"{p50:.2f}", f"{p95:.2f}", f"{recall(got, ftruth, 10):.3f}"),
                  flush=True)
            index.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--queries", type=int, default=300, help="single queries per configuration")
    ap.add_argument("--flat-queries", type=int, default=30, help="fewer for the slow exact scan")
    ap.add_argument("--filter-queries", type=int, default=100)
    ap.add_argument("--nlist", type=int, default=0, help="IVF lists (0: ~4 sqrt(N), a power of 2)")
    ap.add_argument("--nprobes", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--filter-nprobe", type=int, default=32)
    ap.add_argument("--pq-m", type=int, default=64)
    ap.add_argument("--durable", type=int, default=100_000, help="largest size for the durable test")
    ap.add_argument("--milvus", type=int, default=100_000, help="largest size for milvus-lite (0: off)")
    ap.add_argument("--milvus-kinds", nargs="+", default=["ivf", "flat"])
    ap.add_argument("--milvus-queries", type=int, default=30)
    ap.add_argument("--threads", type=int, default=0, help="FAISS / torch threads to build (0: all)")
    ap.add_argument("--search-threads", type=int, default=1,
                    help="FAISS threads while timing single queries (1: steady on a shared box)")
    ap.add_argument("--tmp", default=None, help="folder for the on-disk tests")
    args = ap.parse_args()

    import faiss

    global SEARCH_THREADS
    SEARCH_THREADS = args.search_threads
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
        torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_model()}; faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads to "
          f"build, {SEARCH_THREADS} to search), "
          f"numpy {np.__version__}, torch {torch.__version__}")
    for n in args.sizes:
        bench_size(n, args)


if __name__ == "__main__":
    main()
