"""`hareid serve` under load: end-to-end latency, concurrent clients, abuse; bounded, localhost only.

    flock /tmp/hareid-cpu.lock python benchmarks/bench_serve.py CKPT IMAGES_DIR \
        [--gallery-size 100000] [--clients 8] [--requests 1000]

1. Builds a gallery index of ``--gallery-size`` vectors in a temp folder: the embeddings of the
   images in IMAGES_DIR (real, servable) plus random unit vectors (padding to the size).
2. Starts ``hareid serve`` in a subprocess on 127.0.0.1 and a free port.
3. End-to-end, one client: ``--e2e`` sequential ``POST /search`` with an image upload
   (upload -> decode -> embed -> search -> JSON): p50 / p95 client-side, and the server's own time.
4. Load: ``--clients`` threads share ``--requests`` requests, mixed 60 % search (image upload),
   20 % add (a new image each: POST /gallery), 17 % embed, 3 % abuse (not an image, a truncated
   JPEG, a PNG declaring 100k x 100k pixels, a path-traversal file name) that must get a 4xx.
   Reports p50 / p95 per kind, errors (5xx, transport errors, a 4xx where a 2xx was due, a 2xx
   where a 4xx was due), requests/s and the server's RSS (start, peak, end) and batching.
5. Checks the index afterwards: size = start + accepted adds; a search still answers.
Stops by itself: a fixed request count, ``--timeout`` seconds at most, then the server is killed.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from _machine import cpu_model
from _proc import stop_group, wait_healthy


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_gallery(ckpt: str, images: list[Path], size: int, out: Path, kind: str, nlist: int) -> int:
    from hareid.index import FaissIndex
    from hareid.index.embedder import load_embedder

    emb = load_embedder(ckpt, device="cpu")
    real = emb.embed([str(p) for p in images])  # (R, D)
    index = FaissIndex(emb.dim, kind=kind, nlist=nlist, nprobe=32, path=out)
    rng = np.random.default_rng(0)
    index.add(real, [str(p.resolve()) for p in images], None,
              [f"c{i % 6}" for i in range(len(images))], np.arange(len(images), dtype=float), "real")
    left = size - len(images)
    while left > 0:
        n = min(left, 50_000)
        x = rng.standard_normal((n, emb.dim), dtype=np.float32)
        index.add(x, None, None, [f"c{i % 6}" for i in range(n)], None, "padding")
        left -= n
    index.set_setting("root", str(Path(os.path.commonpath([str(p.resolve()) for p in images]))))
    index.close()
    return emb.dim


def jpeg_variant(data: bytes, seed: int) -> bytes:
    """The same picture with one pixel changed: a new upload (uploads are content-addressed)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("RGB")
        im.putpixel((seed % im.width, (seed // im.width) % im.height),
                    (seed % 256, (seed * 7) % 256, (seed * 13) % 256))
        buf = io.BytesIO()
        im.save(buf, format="PNG")  # lossless: the change survives
        return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width x height`` pixels but carries almost no data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def abuse_payloads(sample: bytes) -> list[tuple[str, str, bytes, str]]:
    return [("/search", "notes.txt", b"plain text, not an image\n" * 20, "image"),
            ("/search", "cut.jpg", sample[: len(sample) // 2], "image"),
            ("/search", "bomb.png", png_header(100_000, 100_000), "image"),
            ("/gallery", "../../etc/passwd.jpg", sample, "images")]


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("images", help="folder of person images (queries, adds, real gallery part)")
    ap.add_argument("--gallery-size", type=int, default=100_000)
    ap.add_argument("--kind", default="ivf", choices=["flat", "ivf"])
    ap.add_argument("--nlist", type=int, default=1024)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--e2e", type=int, default=200, help="sequential end-to-end queries")
    ap.add_argument("--timeout", type=float, default=900, help="whole run, seconds")
    ap.add_argument("--threads", type=int, default=0, help="server torch/FAISS threads (0: default)")
    args = ap.parse_args()
    import httpx

    deadline = time.monotonic() + args.timeout
    images = sorted(p for p in Path(args.images).rglob("*") if p.suffix.lower() in (".jpg", ".png"))
    if len(images) < 50:
        sys.exit(f"{args.images}: need at least 50 images, found {len(images)}")
    work = Path(tempfile.mkdtemp(prefix="hareid-bench-serve-"))
    real = images[: min(len(images) // 2, 2000)]
    probes = images[len(real):]
    t = time.perf_counter()
    dim = build_gallery(args.checkpoint, real, args.gallery_size, work / "idx", args.kind, args.nlist)
    print(f"CPU: {cpu_model()}")
    print(f"gallery: {args.gallery_size} vectors ({len(real)} real images + random unit vectors), "
          f"{dim}-d, {args.kind} (nlist {args.nlist}, nprobe 32), built in "
          f"{time.perf_counter() - t:.0f} s")

    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    server = subprocess.Popen([sys.executable, "-m", "hareid", "serve", args.checkpoint, "--gallery",
                               str(work / "idx"), "--host", "127.0.0.1", "--port", str(port),
                               "--device", "cpu", "--quiet"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    log: list[str] = []
    threading.Thread(target=lambda: log.extend(server.stdout), daemon=True).start()  # type: ignore[arg-type]
    try:
        with httpx.Client(base_url=base, timeout=60) as c:
            wait_healthy(c, server, deadline, lambda: "".join(log[-30:]))
            start = c.get("/healthz").json()
            rss0 = rss_mib(server.pid)
            data = [p.read_bytes() for p in probes[:200]]

            # ---------------------------------------------------------- end-to-end, one client
            for d in data[:5]:  # warm-up
                c.post("/search", files={"image": ("q.jpg", d, "image/jpeg")})
            lat, took = [], []
            for i in range(args.e2e):
                t0 = time.perf_counter()
                r = c.post("/search", files={"image": ("q.jpg", data[i % len(data)], "image/jpeg")},
                           data={"k": 10})
                lat.append((time.perf_counter() - t0) * 1e3)
                r.raise_for_status()
                took.append(r.json()["took_ms"])
            print(f"\nend-to-end, 1 client, {args.e2e} queries (upload -> embed -> search -> JSON, "
                  f"k = 10, {start['count']} gallery vectors): p50 {pct(lat, 50):.1f} ms, "
                  f"p95 {pct(lat, 95):.1f} ms (server-side p50 {pct(took, 50):.1f} ms)")

        # -------------------------------------------------------------- load
        rng = random.Random(0)
        plan = []
        for _ in range(args.requests):
            u = rng.random()
            plan.append("search" if u < 0.60 else "add" if u < 0.80 else "embed" if u < 0.97 else "abuse")
        adds = [jpeg_variant(data[i % len(data)], i) for i in range(plan.count("add"))]
        bad = abuse_payloads(data[0])
        results: list[tuple[str, int, float, str]] = []
        lock = threading.Lock()
        cursor = iter(enumerate(plan))
        add_iter = iter(adds)
        peak = [rss0]
        stop = threading.Event()

        def sampler() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], rss_mib(server.pid))
                time.sleep(0.2)

        def client(seed: int) -> None:
            r_ = random.Random(seed)
            with httpx.Client(base_url=base, timeout=120) as cl:
                while time.monotonic() < deadline:
                    with lock:
                        nxt = next(cursor, None)
                        payload = next(add_iter) if nxt and nxt[1] == "add" else None
                    if nxt is None:
                        return
                    i, kind = nxt
                    t0 = time.perf_counter()
                    status, note = -1, ""
                    try:
                        if kind == "search":
                            resp = cl.post("/search", files={"image": ("q.jpg", data[i % len(data)], "image/jpeg")},
                                           data={"k": 10, "camera": ["c1", "c2", "c3"]} if i % 4 == 0 else {"k": 10})
                        elif kind == "embed":
                            resp = cl.post("/embed", files={"image": ("q.jpg", data[i % len(data)], "image/jpeg")})
                        elif kind == "add":
                            resp = cl.post("/gallery", files={"images": (f"new{i}.png", payload, "image/png")},
                                           data={"camera": "load", "time": str(i)})
                        else:
                            route, name, body, field = bad[r_.randrange(len(bad))]
                            resp = cl.post(route, files={field: (name, body, "application/octet-stream")})
                        status = resp.status_code
                        if status >= 400:
                            note = resp.text[:100]
                    except httpx.TransportError as e:
                        note = repr(e)
                    with lock:
                        results.append((kind, status, (time.perf_counter() - t0) * 1e3, note))

        threading.Thread(target=sampler, daemon=True).start()
        t0 = time.perf_counter()
        threads = [threading.Thread(target=client, args=(s,)) for s in range(args.clients)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - t0
        stop.set()

        errors = [(k, s, n) for k, s, _, n in results
                  if (k == "abuse" and not 400 <= s < 500) or (k != "abuse" and s != 200)]
        print(f"\nload: {args.clients} clients, {len(results)} of {args.requests} requests in "
              f"{wall:.1f} s ({len(results) / wall:.1f} requests/s), errors {len(errors)}")
        print("\n| kind | requests | expected | p50 (ms) | p95 (ms) | max (ms) |")
        print("| --- | --- | --- | --- | --- | --- |")
        for kind in ("search", "add", "embed", "abuse"):
            ls = [lat for k, _, lat, _ in results if k == kind]
            want = "4xx" if kind == "abuse" else "200"
            print(f"| {kind} | {len(ls)} | {want} | {pct(ls, 50):.1f} | {pct(ls, 95):.1f} | "
                  f"{max(ls) if ls else float('nan'):.1f} |")
        for e in errors[:5]:
            print("  error:", e)
        with httpx.Client(base_url=base, timeout=60) as c:
            end = c.get("/healthz").json()
            added = sum(1 for k, s, _, _ in results if k == "add" and s == 200)
            ok = end["count"] == start["count"] + added
            r = c.post("/search", files={"image": ("q.jpg", data[0], "image/jpeg")}).status_code
        print(f"\nserver RSS: {rss0:.0f} MiB at start, peak {peak[0]:.0f} MiB, "
              f"{rss_mib(server.pid):.0f} MiB at the end")
        print(f"batching: {end['batching']}")
        print(f"index after the run: {end['count']} = {start['count']} + {added} accepted adds: "
              f"{'ok' if ok else 'MISMATCH'}; search answers {r}")
        if errors or not ok or r != 200:
            sys.exit(1)
    finally:
        stop_group(server, 60)
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
