"""The ``hareid`` command: ``hareid demo|train|eval|report|visualize|export|index|search|...``.

Every sub-command is a small function over the library. Errors a user can fix end in one line on
stderr and exit code 2 (``--debug`` prints the traceback too). Heavy imports happen inside the
commands so that ``hareid --help`` is instant.
"""

from __future__ import annotations

import argparse
import errno
import json
import shlex
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hareid import CACHE_DIR as DEFAULT_CACHE
from hareid.errors import HareidError

_OVERRIDES = "Overrides are dotted config keys, e.g.  train.epochs=3 data.batch_size=64 model.num_regions=2"


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


# ---------------------------------------------------------------------------------------------- #
# commands
# ---------------------------------------------------------------------------------------------- #
def cmd_demo(args: argparse.Namespace) -> int:
    """Synthetic benchmark -> train HA-CNN -> evaluate -> HTML report, in minutes on a CPU.

    Writes (or reuses) the synthetic pedestrian benchmark (a complete synthetic tree given with
    --data-root is used as it is, e.g. one written by `hareid synthetic`), trains the short
    ``hacnn_synthetic`` recipe, evaluates it and writes RUN/report/index.html. Prints Rank-1 and mAP
    next to the chance level (1 / number of test identities). Run again, it resumes an interrupted
    demo (or just rewrites the report of a finished one); --overwrite starts afresh. The synthetic
    version is the recipe's ``data.options.version`` (e.g. ``data.options.version=2``), else
    hareid's default.
    """
    from hareid.analysis.report import write_report
    from hareid.config import load_config
    from hareid.data.synthetic import DEFAULT_VERSION, _is_complete, default_root, write_synthetic
    from hareid.engine import Trainer

    overrides = ["data.name=synthetic", f"output_dir={args.output}", f"train.seed={args.seed}", "train.resume=auto",
                 *args.overrides]
    cfg = load_config(args.config, overrides)
    version = int(cfg.data.options.get("version", DEFAULT_VERSION))
    data_root = Path(args.data_root) if args.data_root else default_root(version, args.seed, DEFAULT_CACHE)
    if args.data_root and _is_complete(data_root, None):  # an explicit, complete tree: reuse as is
        print(f"[hareid] synthetic benchmark (reused) -> {data_root}")
    else:
        print(f"[hareid] synthetic benchmark v{version} -> {data_root}")
        write_synthetic(data_root, seed=args.seed, version=version)
    cfg.data.root = str(data_root)
    trainer = Trainer(cfg, overwrite=args.overwrite)
    result = trainer.fit()
    if result["interrupted"]:
        return _interrupted(Path(cfg.output_dir), "hareid demo")
    run_dir = Path(cfg.output_dir)
    report = write_report(run_dir, eval_result=trainer.last_result)
    _print_summary(result, run_dir, report, _num_test_ids(trainer.dataset))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train from a YAML config file or a shipped recipe, with dotted overrides.

    The run folder (output_dir) receives config.yaml (the resolved config), metrics.jsonl,
    checkpoints/last.pt and best.pt, and eval.json. Shipped recipes: hacnn_synthetic,
    hacnn_finetune, hacnn_market1501, hacnn_dukemtmc, hacnn_cuhk03, hacnn_msmt17,
    mobilenetv2_synthetic. A folder that holds another run is refused: resume it with
    train.resume=auto, or pass --overwrite. Start from existing weights with model.init=PATH (a
    hareid or torchreid checkpoint, a torchvision ResNet or MobileNetV2 .pth, or
    pkg:PACKAGE/FILE for weights an installed package ships).
    """
    from hareid.config import load_config
    from hareid.engine import Trainer

    overrides = [*args.overrides, *(["data.skip_bad_images=true"] if args.skip_bad_images else [])]
    cfg = load_config(args.config, overrides)
    trainer = Trainer(cfg, overwrite=args.overwrite)
    result = trainer.fit()
    run_dir = Path(cfg.output_dir)
    if result["interrupted"]:
        return _interrupted(run_dir, f"hareid train --config {args.config} ... train.resume=auto")
    if result.get("rank", 0) == 0:
        _print_summary(result, run_dir, None, _num_test_ids(trainer.dataset))
        print(f"[hareid] next: hareid report {run_dir}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a checkpoint on a dataset's query/gallery split: metrics table and a JSON file.

    CMC (Rank-k), mAP and mINP under the chosen protocol (market1501 = torchreid's rules,
    market1501_official = the Market-1501 MATLAB devkit, cuhk03 = single-gallery-shot). The
    dataset layout is detected from ROOT unless --dataset is given.
    """
    from hareid.evaluate.checkpoint import evaluate_checkpoint
    from hareid.fileio import atomic_write_text

    out = Path(args.json) if args.json else Path(args.checkpoint).with_suffix(".eval.json")
    _check_writable(out, "--json")  # before the evaluation, not after it
    result = evaluate_checkpoint(
        args.checkpoint, args.root, dataset=args.dataset, flip=args.flip, rerank=args.rerank,
        metric=args.metric, protocol=args.protocol, batch_size=args.batch_size,
        workers=args.workers, skip_bad_images=args.skip_bad_images, amp=args.amp, junk=args.junk,
    )
    print(result.table())
    atomic_write_text(out, json.dumps({"checkpoint": str(args.checkpoint), "root": str(args.root),
                                       "protocol": args.protocol, **result.to_dict()}, indent=2))
    print(f"[hareid] metrics written to {out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Write the self-contained HTML report of a run folder (RUN/report/index.html).

    Metrics, training curves, CMC, attention overlays and ranked lists; images are inlined, so
    the file can be mailed or opened offline.
    """
    from hareid.analysis.report import write_report

    run = Path(args.run_dir)
    if not run.is_dir():
        raise HareidError(f"{run}: run folder not found; pass the output_dir of `hareid train`")
    if not any((run / f).exists() for f in ("config.yaml", "metrics.jsonl", "eval.json", "checkpoints")):
        raise HareidError(f"{run}: not a hareid run folder (no config.yaml, metrics.jsonl, eval.json "
                          "or checkpoints/); pass the output_dir of `hareid train`")
    path = write_report(run, out_dir=args.out, num_attention_images=args.num_images)
    print(f"[hareid] report: {path}")
    return 0


def cmd_visualize(args: argparse.Namespace) -> int:
    """Draw soft-attention heatmaps and hard-attention regions per stage for some images.

    One row per image: the input, the soft attention of each stage, and each stage's hard
    regions as boxes. Without IMAGES, query images of the checkpoint's own dataset are used.
    With --compare CKPT ...: the soft attention of all the checkpoints side by side on one fixed
    colour scale (mask value 0 blue ... 1 red), each titled by its run folder.
    """
    from hareid.analysis.visualize import plot_attention, plot_attention_compare
    from hareid.data.loader import load_images
    from hareid.models.loading import load_model

    model, info = load_model(args.checkpoint)
    paths = list(args.images) or _dataset_images(info, args.num_images)
    images = load_images(paths, info["height"], info["width"], info["mean"], info["std"])
    if args.compare:
        models = {_run_label(c): load_model(c)[0] for c in [args.checkpoint, *args.compare]}
        out = plot_attention_compare(models, images, Path(args.out))
    else:
        out = plot_attention(model, images, Path(args.out))
    print(f"[hareid] attention picture ({len(paths)} images): {out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export a checkpoint to ONNX or TorchScript and check it against the eager model.

    The exported file is run on a random batch and compared with the eager PyTorch model; the
    maximum absolute difference of the embeddings is printed (the export fails above 1e-4).
    --int8 writes an int8 ONNX model instead (ONNX Runtime, CPU), calibrated on --calib images;
    hareid.Embedder, serve and index read it like any export.
    """
    from hareid.deploy.export import export_metadata, export_model
    from hareid.models.loading import load_model

    model, info = load_model(args.checkpoint)
    h = args.height if args.height is not None else info["height"]
    w = args.width if args.width is not None else info["width"]
    if args.int8:
        return _export_int8(args, model, info, h, w)
    suffix = ".onnx" if args.format == "onnx" else ".ts"
    out = Path(args.out) if args.out else Path(args.checkpoint).with_suffix(suffix)
    meta = export_metadata(model, h, w, info["model"].get("name"))
    report = export_model(model, out, fmt=args.format, height=h, width=w, opset=args.opset, metadata=meta)
    print(f"[hareid] exported {args.format} -> {report['path']} (input Bx3x{h}x{w}, {report['embed_dim']}-d)")
    print(f"[hareid] max |export - eager| = {report['max_abs_diff']:.2e}")
    return 0


def _export_int8(args: argparse.Namespace, model: Any, info: dict, h: int, w: int) -> int:
    from hareid.data.loader import load_images
    from hareid.data.registry import list_images
    from hareid.deploy.quantize import quantize_int8

    if args.format != "onnx":
        raise HareidError("--int8 writes ONNX (ONNX Runtime runs it); drop --format torchscript")
    if not args.calib:
        raise HareidError("--int8 needs --calib FOLDER: a few hundred images of the target domain "
                          "to calibrate activation ranges on (e.g. the training images)")
    paths = list_images(args.calib)
    if not paths:
        raise HareidError(f"{args.calib}: no images to calibrate on")
    paths = paths[::max(1, len(paths) // args.calib_images)][:args.calib_images]
    images = load_images(paths, h, w, info.get("mean"), info.get("std"))
    out = Path(args.out) if args.out else Path(args.checkpoint).with_suffix(".int8.onnx")
    quantize_int8(model, images, h, w, num_calibration=len(images)).save(out)
    print(f"[hareid] exported int8 onnx -> {out} (input Bx3x{h}x{w}, calibrated on {len(images)} "
          f"images of {args.calib})")
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    """Embed a gallery into a vector index (FAISS + SQLite folder, milvus-lite .db or Milvus URI).

    ROOT is a dataset (its --split is indexed), any folder of images (indexed recursively; the
    first sub-folder names the camera), with --meta the folder a CSV of paths is relative to, or
    a tracklets folder (`hareid tracklets`), indexed as footage: every crop (or with
    --per-tracklet one mean vector per tracklet) with its camera, absolute time, source video,
    frame, box and tracklet.
    Resumable: images already in --out are skipped, so rerun the same command after a stop.
    Sharded: run it under torchrun (each rank embeds a share, rank 0 writes), e.g.
    `torchrun --nproc_per_node 4 -m hareid index CKPT ROOT --out DIR`.
    Needs faiss (pip install 'hareid[faiss]') or pymilvus (pip install 'hareid[milvus]').
    """
    from hareid.index.build import index_gallery

    kind, nlist = args.kind, args.nlist
    if args.ivf:  # earlier spelling: --ivf NLIST
        kind, nlist = ("ivf" if kind == "flat" else kind), args.ivf
    res = index_gallery(args.checkpoint, args.root, args.out, dataset=args.dataset,
                        split=args.split, meta=args.meta, kind=kind, nlist=nlist,
                        nprobe=args.nprobe, pq_m=args.pq_m, collection=args.collection,
                        batch_size=args.batch_size, workers=args.workers, progress=not args.quiet,
                        dtype=args.dtype, calibration=args.calib, per_tracklet=args.per_tracklet)
    if res is None:  # a torchrun rank other than 0
        return 0
    info = res["index"]
    if args.per_tracklet:
        print(f"[hareid] index of {info['count']} tracklets ({info['dim']}-d, {info['backend']} "
              f"{info['kind']}) -> {args.out}: {res['added']} added, {res['skipped']} already indexed")
        return 0
    print(f"[hareid] index of {info['count']} images ({info['dim']}-d, {info['backend']} "
          f"{info['kind']}) -> {args.out}: {res['added']} added, {res['skipped']} already indexed")
    if res["unreadable"]:
        print(f"[hareid] {len(res['unreadable'])} unreadable images skipped, e.g. "
              f"{res['unreadable'][0]}")
    return 0


def cmd_link(args: argparse.Namespace) -> int:
    """Link tracklets across cameras into global identities (MOTChallenge files + identities.json).

    TRACKLETS are folders written by `hareid tracklets` (one or several; camera names unique).
    Each tracklet is embedded (mean of its crops' unit embeddings, from --checkpoint or from the
    crop vectors of an --index built on these folders) and tracklets are clustered by
    average linkage on the cosine distance, never joining two tracklets seen at the same time in
    one camera, nor a pair of cameras outside a --travel window, and stopping at --threshold
    (auto: the 5 % quantile of the distances of those certain negatives). Writes
    OUT/<camera>.txt (frame,id,x,y,w,h,conf,-1,-1,-1 with global ids) and OUT/identities.json.
    """
    from hareid.footage.link import link_folders

    doc = link_folders(args.tracklets, args.out, checkpoint=args.checkpoint, index=args.index,
                       threshold=args.threshold, travel=args.travel or (),
                       batch_size=args.batch_size, overwrite=args.overwrite, progress=not args.quiet)
    multi = sum(len({x["camera"] for x in v}) > 1 for v in doc["identities"].values())
    print(f"[hareid] {doc['num_tracklets']} tracklets of {len(doc['cameras'])} cameras -> "
          f"{doc['num_identities']} identities ({multi} seen in 2+ cameras; threshold "
          f"{doc['threshold']:.3f}, {doc['threshold_from']})")
    sheet = ", identities.jpg: check the links by eye" if (Path(args.out) / "identities.jpg").is_file() else ""
    print(f"[hareid] links -> {args.out} ({', '.join(c + '.txt' for c in doc['cameras'])}, identities.json{sheet})")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    """Query images -> top-k gallery matches (rank, cosine similarity, path) from a saved index.

    Filters run inside the index's database: --camera (repeatable), --time-min/--time-max
    (seconds, inclusive), --source.
    """
    from hareid.index import Filter
    from hareid.index.gallery import search_images

    flt = Filter(cameras=args.camera, time_min=args.time_min, time_max=args.time_max,
                 sources=args.source)
    for query, hits in search_images(args.checkpoint, args.index, args.images, k=args.k,
                                     filter=None if flt.empty else flt,
                                     skip_bad_images=args.skip_bad_images,
                                     collection=args.collection):
        print(query)
        for rank, (path, score) in enumerate(hits, 1):
            print(f"  {rank:>3}  {score:7.4f}  {path}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve a search page and a JSON API over a gallery (FastAPI + uvicorn).

    --gallery is an index written by `hareid index` (folder, .db or Milvus URI) or a folder of
    images / a dataset, indexed first into --index (default GALLERY/.hareid-index; resumable).
    The page: drop a query image, see the top matches with camera, time and attention, filter,
    page, add and delete gallery images; crops cut from footage are grouped by tracklet, with a
    per-camera timeline and, for footage given with --footage, the frame they were cut from. The
    API: POST /embed, /search, /gallery; DELETE
    /gallery/ID; GET /healthz; documentation at /docs. Binds 127.0.0.1 unless --host says
    otherwise (the API has no authentication). --check starts the app in-process, runs one
    search and exits (no socket).
    """
    from hareid.serve import build_app, check, serve

    app = build_app(args.checkpoint, args.gallery, index=args.index, uploads=args.uploads,
                    collection=args.collection, max_batch=args.max_batch, device=args.device,
                    progress=not args.quiet, dtype=args.dtype, calibration=args.calib, images=args.images,
                    host=args.host, allow_origins=args.allow_origin, footage=args.footage or ())
    gallery = app.state.gallery
    print(f"[hareid] gallery: {len(gallery.index)} images ({gallery.index.backend} "
          f"{gallery.index.kind}); uploads go to {gallery.uploads}")
    if len(gallery.roots) == 1:  # an index without --images: only uploads are served
        print(f"[hareid] gallery images are not served: pass --images FOLDER (this index was built "
              f"from {gallery.stored_root or 'an unknown folder'})", file=sys.stderr)
    if args.check:
        out = check(app)
        h = out["health"]
        print(f"[hareid] check: healthz {h['status']}, {h['count']} images, page "
              f"{'ok' if out['page_ok'] else 'MISSING'}")
        if "results" in out:
            top = out["results"][0]
            print(f"[hareid] check: gallery item {out['query']['id']} ({out['query']['name']}) -> "
                  f"top match {top['id']} ({top['name']}), distance {top['distance']:.4f}")
        return 0 if h["status"] == "ok" and out["page_ok"] else 1
    print(f"[hareid] open http://{args.host}:{args.port}/ (API docs: /docs); Ctrl-C stops")
    serve(app, host=args.host, port=args.port)
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    """Recognise and check a dataset folder, print its statistics table.

    Layouts: Market-1501, DukeMTMC-reID, CUHK03, MSMT17, hareid's synthetic set, a folder tree
    ROOT/{train,query,gallery}/<identity>/<camera>_<name>.jpg, a CSV manifest, or a tracklets
    folder written by `hareid tracklets` (identities = tracklets; query/gallery = the time-gap
    protocol, whose "cameras" are junk groups: one per tracklet part).
    """
    from hareid.data import build_dataset, check_images, detect_dataset

    root = Path(args.root)
    if not root.exists():
        raise HareidError(f"{root}: no such folder; pass the folder that holds the dataset")
    name = args.dataset or detect_dataset(root)
    if name is None:
        raise HareidError(
            f"{root}: not a recognised dataset layout (Market-1501, DukeMTMC-reID, CUHK03, MSMT17, "
            "synthetic, folder, csv, tracklets); pass --dataset NAME or see `hareid datasets --help`"
        )
    ds = build_dataset(name, root, verbose=False)
    print(f"layout: {name}" + ("" if args.dataset else " (detected)"))
    print(ds.summary())
    if "protocol" in ds.extras:  # a tracklets folder: say what query/gallery and "cameras" are
        p = ds.extras["protocol"]
        print(f"query/gallery: time-gap protocol (gap {p['gap']:g} s); 'cameras' there are junk groups "
              "(one per tracklet part), train identities are tracklets")
    if args.verify_images:
        check_images(ds.train + ds.query + ds.gallery)
        print(f"[hareid] all {len(ds.train) + len(ds.query) + len(ds.gallery)} images decode")
    return 0


def cmd_synthetic(args: argparse.Namespace) -> int:
    """Write the built-in synthetic pedestrian benchmark (Market-1501 layout, masks, part boxes).

    Deterministic from --seed; an existing complete tree with the same parameters (version
    included) is reused. --version 1: cartoon pedestrians, one background per camera; --version 2:
    detector-like street crops (random street scenes, passers-by, misaligned boxes, occluders,
    views, motion blur, JPEG; street clothing with small identity details).
    --video: instead, a multi-camera sequence with ground truth: --people people (v2 renderer)
    walking along a street seen by --num-cams static cameras (default 3: two overlapping views
    and a disjoint one, each starting 3 s after the previous), --frames frames each, as MOT
    sequences (ROOT/<camera>/img1, gt/gt.txt with GLOBAL ids, seqinfo.ini) or --format video
    (ROOT/<camera>/<camera>.avi); ROOT/cameras.json gives each camera's start time.
    """
    import time

    if args.video:
        return _synthetic_video(args)
    from hareid.data.synthetic import (
        DEFAULT_VERSION,
        load_synthetic,
        save_sample_grid,
        write_synthetic,
    )

    version = args.version or DEFAULT_VERSION
    t0 = time.perf_counter()
    root = write_synthetic(
        Path(args.root), seed=args.seed, num_train_ids=args.train_ids, num_test_ids=args.test_ids,
        images_per_id=args.images_per_id, num_cams=args.num_cams or 6, height=args.height or 160,
        width=args.width or 64, progress=not args.quiet, version=version, workers=args.workers,
    )
    seconds = time.perf_counter() - t0
    print(load_synthetic(root).summary())
    print(f"[hareid] synthetic benchmark v{version} at {root} ({seconds:.1f} s)")
    if args.grid:
        print(f"[hareid] sample grid: {save_sample_grid(root, args.grid)}")
    return 0


def _synthetic_video(args: argparse.Namespace) -> int:
    import time

    from hareid.data.synthetic_video import write_synthetic_video

    t0 = time.perf_counter()
    meta = write_synthetic_video(
        args.root, seed=args.seed, num_cams=args.num_cams or 3, num_people=args.people,
        frames=args.frames, height=args.height or 360, width=args.width or 640, fps=args.fps,
        fmt=args.format, hard_negative_frac=args.hard_negatives, overwrite=args.overwrite,
        progress=not args.quiet)
    root = Path(args.root)
    for c in meta["cameras"]:
        print(f"camera {c['name']}: {root / c['path']}, starts {c['start_time_iso']}, street "
              f"{c['x0']:g}-{c['x1']:g} m{' (mirrored)' if c['mirror'] else ''}, people {c['people']}")
    names = " ".join(str(root / c["path"]) for c in meta["cameras"])
    cams = " ".join(f"--camera {c['name']}" for c in meta["cameras"])
    starts = " ".join(f"--start-time {c['start_time_iso']}" for c in meta["cameras"])
    print(f"[hareid] synthetic video ({len(meta['cameras'])} cameras x {meta['frames']} frames, "
          f"{len(meta['people'])} people) at {root} ({time.perf_counter() - t0:.1f} s)")
    print(f"[hareid] next: hareid tracklets {names} {cams} {starts} --out TRACKLETS")
    return 0


def cmd_attention_score(args: argparse.Namespace) -> int:
    """Score attention against the synthetic set's ground truth: trained vs untrained model.

    Soft attention: share of the attention mass on the person's mask (lift > 1 = concentrated on
    the person). Hard attention: how the regions cover the person and which body part each
    region matches best. Needs a run trained on the synthetic benchmark; writes
    RUN/attention_score.json.
    """
    from hareid.analysis.attention_score import score_run

    run = Path(args.run_dir)
    table = score_run(run, num_images=args.num_images)
    print(table)
    print(f"[hareid] scores written to {run / 'attention_score.json'}")
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    """Train attention variants with the same recipe, budget and seeds; print mean +- std.

    Variants: none, soft, hard, full, no_cross (the default set), and the soft-mask variants
    soft_sigmoid, full_sigmoid, full_temperature, soft_spatial, full_spatial, and soft_guided,
    full_guided (the spatial mask taught by the person masks: loss.attn_weight; see hareid.analysis.ablation).
    Trains on an existing synthetic tree (--data-root; write it with `hareid synthetic`), evaluates
    every --curve-every epochs for learning curves. Results are appended to OUTPUT/results.jsonl as
    they finish, so an interrupted ablation resumes where it stopped; OUTPUT/ablation.md,
    ablation.png and ablation_curves.png hold the table and the plots.
    """
    from hareid.analysis.ablation import run_ablation

    # `--variants a b key=value`: argparse hands trailing overrides to --variants; take them back
    given = args.variants or []
    variants = [v for v in given if "=" not in v] or None
    overrides = [*args.overrides, *(v for v in given if "=" in v)]
    table = run_ablation(Path(args.output), seeds=args.seeds, variants=variants,
                         overrides=overrides, data_root=args.data_root, config=args.config,
                         curve_every=args.curve_every)
    print(table)
    return 0


def cmd_tracklets(args: argparse.Namespace) -> int:
    """Person tracklets from footage: video files, frame folders or MOTChallenge sequences.

    Each source is one camera: named by --camera (repeat it per source, in order) or its file
    name, with an absolute start time from --start-time (repeatable), else the MP4/MOV creation
    time, else 0 (printed per camera and kept in tracklets.json, per crop with the frame, box
    and tracklet key "<camera>/<nnnn>").
    Detects people (static camera: MOG2 background subtraction, or --detector hog; a MOT
    sequence's det/det.txt or gt/gt.txt boxes are used as given), links them into tracklets
    (IoU + motion, Hungarian assignment), drops tracks that hold two people or too few frames,
    and writes a dataset folder: crops named <source>_<tracklet>_<frame>.jpg, foreground masks,
    tracklets.json (boxes, frames, timestamps), summary.txt and contact_sheet.jpg (one row per
    tracklet). `hareid datasets DIR` reads it; the footage is never modified. Needs OpenCV:
    pip install 'hareid[video]'.
    """
    from hareid.footage import extract_tracklets, summary_table

    meta = extract_tracklets(args.footage, args.out, _extract_config(args), overwrite=args.overwrite,
                             progress=not args.quiet)
    print(summary_table(meta, max_rows=args.rows))
    print(f"[hareid] tracklets -> {args.out} (check them by eye: {Path(args.out) / 'contact_sheet.jpg'})")
    print(f"[hareid] next: hareid adapt CHECKPOINT {args.out} --out RUN")
    return 0


def cmd_adapt(args: argparse.Namespace) -> int:
    """Adapt a model to your footage without labels (tracklets as pseudo-identities).

    FOOTAGE is a tracklets folder (from `hareid tracklets`) or footage (videos, frame folders, MOT
    sequences), turned into tracklets under OUT/tracklets first. The later 20 % of the footage is
    held out: its tracklets give the label-free validation (time-gap protocol) that picks
    OUT/checkpoints/best.pt. Writes a normal run folder (config.yaml, metrics.jsonl, checkpoints,
    eval.json) plus OUT/adapt.json. CHECKPOINT: a hareid checkpoint or a torchreid HACNN one.
    """
    from hareid.footage.adapt import adapt, run_summary

    footage = [f for f in args.footage if "=" not in f]
    overrides = [*args.overrides, *(f for f in args.footage if "=" in f)]
    if not footage:
        raise HareidError("no footage given; pass a tracklets folder, videos, frame folders or MOT sequences")
    result = adapt(args.checkpoint, footage, args.out, overrides, extract_cfg=_extract_config(args),
                   progress=not args.quiet, overwrite=args.overwrite)
    if result.get("interrupted"):  # resume from the run's own tracklets, with the same options
        again = [o for o in overrides if not o.startswith("train.resume=")]
        return _interrupted(Path(args.out), " ".join(map(shlex.quote, [
            "hareid", "adapt", str(args.checkpoint), str(Path(args.out) / "tracklets"), "--out", str(args.out),
            *again, "train.resume=auto"])))
    print(run_summary(result))
    print(f"[hareid] run folder: {args.out}; model: {Path(args.out) / 'checkpoints' / 'best.pt'}")
    return 0


# ---------------------------------------------------------------------------------------------- #
# helpers
# ---------------------------------------------------------------------------------------------- #
def _interrupted(run_dir: Path, again: str) -> int:
    """A run stopped by Ctrl-C / SIGTERM after saving its checkpoint: say how to resume; exit 130."""
    print(f"[hareid] interrupted; checkpoint saved in {run_dir / 'checkpoints'}; resume with: {again}",
          file=sys.stderr)
    return 130


def _positive(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _dtype_args(sp: argparse.ArgumentParser, calib_default: str) -> None:
    """--dtype and --calib: the embedding precision (one policy, hareid.runtime.auto_dtype)."""
    sp.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16", "int8"],
                    help="embedding precision (auto: bf16 on CPUs with native bf16, a half type on "
                         "CUDA, else fp32; int8: ONNX Runtime on the CPU, calibrated on --calib)")
    sp.add_argument("--calib", default=None,
                    help=f"folder of images to calibrate --dtype int8 on (default: {calib_default})")


def _check_writable(path: Path, option: str) -> None:
    """A file can be created in ``path``'s folder (tried with a temporary file), else one line naming it."""
    import tempfile

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as e:
        raise HareidError(f"{path}: cannot write {option} here ({e.strerror or e}); pick another {option}") from None


def _port(text: str) -> int:
    """argparse type: a TCP port, 0 to 65535 (checked before any indexing)."""
    value = _non_negative(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be <= 65535, got {value}")
    return value


def _num_test_ids(dataset: Any) -> int | None:
    query = getattr(dataset, "query", None)
    return len({r.pid for r in query}) if query else None


def _print_summary(result: dict, run_dir: Path, report: Path | None, num_test_ids: int | None) -> None:
    r1, mAP = result.get("rank1"), result.get("mAP")
    if r1 is not None and mAP is not None:
        chance = f" (chance {100 / num_test_ids:.1f}% = 1/{num_test_ids} test identities)" if num_test_ids else ""
        print(f"[hareid] Rank-1 {100 * r1:.1f}%{chance}  mAP {100 * mAP:.1f}%")
    print(f"[hareid] run folder: {run_dir}")
    if report is not None:
        print(f"[hareid] report: {report}")


def _extract_config(args: argparse.Namespace) -> Any:
    from hareid.footage import ExtractConfig

    return ExtractConfig(detector=args.detector, boxes=args.boxes, fps=args.fps, start=args.start,
                         stop=args.stop, min_frames=args.min_frames, masks=args.masks,
                         cameras=args.camera, start_times=args.start_time)


def _add_footage_options(sp: argparse.ArgumentParser) -> None:
    g = sp.add_argument_group("footage options (videos, frame folders, MOT sequences)")
    g.add_argument("--detector", default="mog2", choices=["mog2", "hog"],
                   help="people detector for a static camera (hog needs OpenCV 4.x)")
    g.add_argument("--boxes", default="auto", choices=["auto", "gt", "det", "detect"],
                   help="MOT sequences: given boxes (auto: gt, else det) or detect")
    g.add_argument("--camera", action="append", default=None, metavar="NAME",
                   help="camera name of each source, repeated in the order of the sources "
                        "(default: the file or folder name)")
    g.add_argument("--start-time", action="append", default=None, metavar="TIME",
                   help="absolute time of each source's first frame, repeated in order: ISO 8601 "
                        "(2024-05-01T08:30:00+02:00; no offset = UTC) or unix seconds (default: "
                        "the MP4/MOV creation time, else 0)")
    g.add_argument("--fps", type=float, default=None, help="frame rate (frame folders default to 25)")
    g.add_argument("--start", type=int, default=0, help="first frame (0-based)")
    g.add_argument("--stop", type=int, default=None, help="stop before this frame")
    g.add_argument("--min-frames", type=int, default=8, help="shortest tracklet kept (boxes)")
    g.add_argument("--masks", default=None, action=argparse.BooleanOptionalAction,
                   help="write foreground masks (default: with the mog2 detector)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    g.add_argument("--quiet", action="store_true", help="no progress bars")


def _run_label(checkpoint: str | Path) -> str:
    """``RUN/checkpoints/best.pt`` -> ``RUN``'s name; any other file -> its stem."""
    path = Path(checkpoint)
    return path.parent.parent.name if path.parent.name == "checkpoints" else path.stem


def _dataset_images(info: dict, n: int) -> list[str]:
    """``n`` query images spread over the checkpoint's own dataset (for ``visualize``)."""
    from hareid.data import build_dataset

    data = (info.get("config") or {}).get("data") or {}
    if not data.get("name") or not data.get("root"):
        raise HareidError(f"{info['path']}: no dataset recorded in the checkpoint; pass image files")
    query = build_dataset(data["name"], data["root"], verbose=False).query
    step = max(1, len(query) // max(n, 1))
    return [r.path for r in query[::step][:n]]


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples kept as written; meaningful defaults appended to the help."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        d = action.default
        if (d is None or d is False or d is argparse.SUPPRESS or "(default" in text
                or (action.option_strings == [] and action.nargs in ("*", "+"))):
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


_HELP: dict[str, tuple[Callable[[argparse.Namespace], int], list[str]]] = {
    "demo": (cmd_demo, ["hareid demo", "hareid demo --output runs/demo2 train.epochs=12"]),
    "train": (cmd_train, ["hareid train --config hacnn_market1501 data.root=data/market1501",
                          "hareid train --config my.yaml train.epochs=3 output_dir=runs/try"]),
    "eval": (cmd_eval, ["hareid eval runs/demo/checkpoints/best.pt data/market1501 --flip",
                        "hareid eval best.pt data/market1501 --protocol market1501_official --json m.json"]),
    "report": (cmd_report, ["hareid report runs/demo"]),
    "visualize": (cmd_visualize, ["hareid visualize runs/demo/checkpoints/best.pt --out attention.png",
                                  "hareid visualize runs/a/checkpoints/best.pt --compare runs/b/checkpoints/best.pt",
                                  "hareid visualize best.pt a.jpg b.jpg --out attention.png"]),
    "export": (cmd_export, ["hareid export runs/demo/checkpoints/best.pt --format onnx",
                            "hareid export best.pt --format torchscript --out model.ts"]),
    "index": (cmd_index, ["hareid index runs/demo/checkpoints/best.pt data/market1501 --out gallery_index",
                          "hareid index best.pt photos/ --out photos.db   # milvus-lite",
                          "hareid index best.pt big/ --out big_index --kind ivfpq --nlist 16384",
                          "torchrun --nproc_per_node 4 -m hareid index best.pt big/ --out big_index"]),
    "link": (cmd_link, ["hareid link data/site --checkpoint best.pt --out data/site_links",
                        "hareid link data/day1 data/day2 --index site_index --out links --travel gate:lobby:5:60",
                        "hareid link data/site --checkpoint best.pt --out links --threshold 0.25"]),
    "search": (cmd_search, ["hareid search runs/demo/checkpoints/best.pt gallery_index query.jpg -k 5",
                            "hareid search best.pt gallery_index q.jpg --camera 2 --time-min 100"]),
    "serve": (cmd_serve, ["hareid serve runs/demo/checkpoints/best.pt --gallery runs/demo/index",
                          "hareid serve best.pt --gallery photos/ --port 8080",
                          "hareid serve best.pt --gallery gallery.db --host 0.0.0.0",
                          "hareid serve best.pt --gallery cams.db --footage /data/videos"]),
    "datasets": (cmd_datasets, ["hareid datasets data/market1501",
                                "hareid datasets data/cuhk03 --dataset cuhk03 --verify-images"]),
    "synthetic": (cmd_synthetic, ["hareid synthetic data/synthetic",
                                  "hareid synthetic data/synthetic-v2 --version 2 --grid grid.png",
                                  "hareid synthetic data/small --train-ids 20 --test-ids 20 --grid grid.png",
                                  "hareid synthetic data/street --video --num-cams 3 --people 8 --frames 300"]),
    "attention-score": (cmd_attention_score, ["hareid attention-score runs/demo"]),
    "ablate": (cmd_ablate, ["hareid ablate --data-root data/synthetic-v2 --seeds 0 1 2",
                            "hareid ablate --variants full full_sigmoid --seeds 0 train.epochs=3"]),
    "tracklets": (cmd_tracklets, ["hareid tracklets street.mp4 --out data/street_tracklets",
                                  "hareid tracklets cam1.mp4 cam2.mp4 --out data/tracklets --start 0 --stop 3000",
                                  "hareid tracklets a.mp4 b.avi --camera lobby --camera gate "
                                  "--start-time 2024-05-01T08:30:00Z --start-time 2024-05-01T08:31:10Z --out data/site",
                                  "hareid tracklets MOT17/train/MOT17-09-DPM --out data/mot09 --boxes det"]),
    "adapt": (cmd_adapt, ["hareid adapt runs/demo/checkpoints/best.pt data/street_tracklets --out runs/street",
                          "hareid adapt best.pt street.mp4 --out runs/street train.epochs=4 adapt.merge=true"]),
}


_AddCommand = Callable[..., argparse.ArgumentParser]  # add(name, extra_epilog=None) -> the sub-parser


def build_parser() -> argparse.ArgumentParser:
    """The ``hareid`` argument parser: one sub-parser per command, added by group."""
    p = argparse.ArgumentParser(
        prog="hareid",
        description="Harmonious attention (HA-CNN) for person re-identification.\n\n"
                    "Start with `hareid demo`; `hareid COMMAND --help` explains each command.",
        formatter_class=_Formatter,
    )
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    p.add_argument("--version", action="version", version=f"hareid {_version()}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, extra_epilog: str | None = None) -> argparse.ArgumentParser:
        """The sub-parser of command ``name``: help and examples from ``_HELP``."""
        fn, examples = _HELP[name]
        doc = (fn.__doc__ or "").strip()
        epilog = _examples(*examples) + (f"\n\n{extra_epilog}" if extra_epilog else "")
        sp = sub.add_parser(name, help=doc.splitlines()[0], description=_dedent(doc), epilog=epilog,
                            formatter_class=_Formatter, parents=[common])
        sp.set_defaults(func=fn)
        return sp

    _add_training_commands(add)
    _add_gallery_commands(add)
    _add_data_commands(add)
    _add_footage_commands(add)
    return p


def _add_training_commands(add: _AddCommand) -> None:
    """Demo, train, eval, report, visualize, export: a model's life."""
    sp = add("demo", _OVERRIDES)
    sp.add_argument("--output", default="runs/demo", help="run folder")
    sp.add_argument("--data-root", default=None,
                    help=f"where the synthetic set is cached (default: {DEFAULT_CACHE}/synthetic-v<version>, "
                         "$HAREID_HOME moves it)")
    sp.add_argument("--config", default="hacnn_synthetic", help="recipe name or YAML file")
    sp.add_argument("--seed", type=int, default=0, help="data and training seed")
    sp.add_argument("--overwrite", action="store_true",
                    help="start afresh in --output instead of resuming (old files kept until the first checkpoint)")
    sp.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")

    sp = add("train", _OVERRIDES)
    sp.add_argument("--config", required=True,
                    help="YAML file or shipped recipe name (e.g. hacnn_market1501)")
    sp.add_argument("--overwrite", action="store_true",
                    help="start a new run in an output_dir that holds another run (kept until the first checkpoint)")
    sp.add_argument("--skip-bad-images", action="store_true",
                    help="skip unreadable images (train: replaced by another of the identity; eval: dropped)")
    sp.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")

    sp = add("eval")
    sp.add_argument("checkpoint", help="a hareid checkpoint (.pt) or a torchreid HACNN checkpoint")
    sp.add_argument("root", help="dataset root folder")
    sp.add_argument("--dataset", default=None, help="dataset name (auto-detected when omitted)")
    sp.add_argument("--metric", default="euclidean", choices=["euclidean", "cosine"],
                    help="distance between embeddings")
    sp.add_argument("--protocol", default="market1501",
                    choices=["market1501", "market1501_official", "cuhk03"], help="evaluation rules")
    sp.add_argument("--flip", action="store_true", help="flip test-time augmentation")
    sp.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking")
    sp.add_argument("--junk", default="auto", choices=["auto", "camera", "tracklet", "none"],
                    help="same-identity gallery entries ignored: same camera (Market-1501), same "
                         "tracklet (one camera), only the query's own file; auto: camera with 2+ "
                         "cameras, else tracklet")
    sp.add_argument("--batch-size", type=_positive, default=64, help="images per forward pass")
    sp.add_argument("--workers", type=_non_negative, default=2, help="data-loading processes")
    sp.add_argument("--amp", default="none", choices=["none", "bf16", "fp16", "auto"],
                    help="embedding precision (auto: bf16 on CPUs with native bf16, a half type on CUDA, else none)")
    sp.add_argument("--skip-bad-images", action="store_true", help="drop unreadable images (listed as warnings)")
    sp.add_argument("--json", default=None,
                    help="where to write the metrics JSON (default: CHECKPOINT with .eval.json)")

    sp = add("report")
    sp.add_argument("run_dir", help="a run folder written by `hareid train` or `hareid demo`")
    sp.add_argument("--out", default=None, help="report folder (default: RUN/report)")
    sp.add_argument("--num-images", type=_non_negative, default=8, help="images in the attention gallery")

    sp = add("visualize")
    sp.add_argument("checkpoint", help="a hareid checkpoint (.pt)")
    sp.add_argument("images", nargs="*", help="image files (default: query images of the run's dataset)")
    sp.add_argument("--num-images", type=int, default=4, help="how many dataset images without IMAGES")
    sp.add_argument("--out", default="attention.png", help="PNG to write")
    sp.add_argument("--compare", nargs="+", default=None, metavar="CKPT",
                    help="more checkpoints: draw every model's soft attention side by side")

    sp = add("export")
    sp.add_argument("checkpoint", help="a hareid checkpoint (.pt)")
    sp.add_argument("--format", choices=["onnx", "torchscript"], default="onnx", help="export format")
    sp.add_argument("--out", default=None, help="output file (default: CHECKPOINT with .onnx / .ts)")
    sp.add_argument("--height", type=_positive, default=None, help="input height (default: the training size)")
    sp.add_argument("--width", type=_positive, default=None, help="input width (default: the training size)")
    sp.add_argument("--opset", type=_positive, default=17, help="ONNX opset (7 to the installed exporter's newest)")
    sp.add_argument("--int8", action="store_true",
                    help="write an int8 ONNX model (ONNX Runtime, CPU; calibrated on --calib)")
    sp.add_argument("--calib", default=None, help="folder of images to calibrate --int8 on")
    sp.add_argument("--calib-images", type=_positive, default=256,
                    help="calibration images, spread over --calib (default 256)")


def _add_gallery_commands(add: _AddCommand) -> None:
    """Index, search, serve: a gallery and its search."""
    sp = add("index")
    sp.add_argument("checkpoint", help="a hareid checkpoint (.pt)")
    sp.add_argument("root", help="dataset root (its --split is indexed) or a folder of images")
    sp.add_argument("--out", required=True,
                    help="index to create or extend: a folder (FAISS + SQLite), a .db file "
                         "(milvus-lite) or a Milvus URI (http://host:19530)")
    sp.add_argument("--dataset", default=None, help="dataset name (auto-detected when omitted)")
    sp.add_argument("--split", default="gallery", choices=["gallery", "query", "train"])
    sp.add_argument("--meta", default=None,
                    help="CSV with a path column (relative to ROOT) and optional camera, time, "
                         "source, pid columns")
    sp.add_argument("--kind", default="flat", choices=["flat", "ivf", "ivfpq"],
                    help="exact, inverted lists, or inverted lists + product quantisation (10M+)")
    sp.add_argument("--nlist", type=_positive, default=1024, help="IVF lists (kind ivf / ivfpq)")
    sp.add_argument("--nprobe", type=_positive, default=None, help="IVF lists visited per query (default 16)")
    sp.add_argument("--pq-m", type=_positive, default=64, help="PQ sub-quantisers (bytes per vector)")
    sp.add_argument("--ivf", type=int, default=0, help="same as --kind ivf --nlist N (0: off)")
    sp.add_argument("--collection", default=None, help="Milvus collection (default hareid_gallery)")
    sp.add_argument("--batch-size", type=_positive, default=64, help="images per forward pass and per commit")
    sp.add_argument("--workers", type=_non_negative, default=2, help="data-loading processes per rank")
    _dtype_args(sp, "ROOT")
    sp.add_argument("--per-tracklet", action="store_true",
                    help="a tracklets folder: one mean vector per tracklet instead of every crop")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")

    sp = add("link")
    sp.add_argument("tracklets", nargs="+", help="tracklets folders written by `hareid tracklets`")
    sp.add_argument("--out", required=True, help="folder to write (per-camera MOT files, identities.json)")
    emb = sp.add_mutually_exclusive_group(required=True)
    emb.add_argument("--checkpoint", default=None, help="embed the crops with this checkpoint")
    emb.add_argument("--index", default=None,
                     help="take the crop vectors from this index (built by `hareid index` on the folders)")
    sp.add_argument("--threshold", default="auto",
                    help="cosine distance at which clustering stops, or auto (from certain negatives)")
    sp.add_argument("--travel", action="append", default=None, metavar="CAM_A:CAM_B:MIN_S:MAX_S",
                    help="seconds between leaving one camera's view and entering the other's "
                         "(repeatable; negative MIN for overlapping views)")
    sp.add_argument("--batch-size", type=_positive, default=64, help="images per forward pass")
    sp.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")

    sp = add("search")
    sp.add_argument("checkpoint", help="the checkpoint the index was built with")
    sp.add_argument("index", help="index written by `hareid index` (folder, .db or Milvus URI)")
    sp.add_argument("images", nargs="+", help="query image files")
    sp.add_argument("-k", type=_positive, default=10, help="matches per query")
    sp.add_argument("--camera", action="append", default=None, help="only this camera (repeatable)")
    sp.add_argument("--time-min", type=float, default=None, help="only items at or after this time")
    sp.add_argument("--time-max", type=float, default=None, help="only items at or before this time")
    sp.add_argument("--source", action="append", default=None, help="only this source (repeatable)")
    sp.add_argument("--skip-bad-images", action="store_true", help="drop unreadable query images (listed as warnings)")
    sp.add_argument("--collection", default=None,
                    help="Milvus collection (default hareid_gallery)")

    sp = add("serve")
    sp.add_argument("checkpoint", help="the checkpoint the gallery is (or will be) indexed with")
    sp.add_argument("--gallery", required=True,
                    help="an index (folder, .db, Milvus URI) or a folder of images / a dataset")
    sp.add_argument("--index", default=None,
                    help="where to index a --gallery folder (default GALLERY/.hareid-index)")
    sp.add_argument("--uploads", default=None,
                    help="folder for images added through the API (default: beside the index)")
    sp.add_argument("--collection", default=None, help="Milvus collection (default hareid_gallery)")
    sp.add_argument("--images", default=None,
                    help="folder the images of an index --gallery are served from (default: the "
                         "--gallery folder; an index's stored settings never decide)")
    sp.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                    help="a web origin (https://app.example:443) allowed to call the API besides the "
                         "page itself (repeatable); other origins and Host names get 403")
    sp.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: every interface)")
    sp.add_argument("--port", type=_port, default=8000, help="TCP port")
    sp.add_argument("--max-batch", type=_positive, default=32, help="most images per batched model call")
    sp.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    _dtype_args(sp, "a --gallery folder")
    sp.add_argument("--check", action="store_true", help="start in-process, run one search, exit")
    sp.add_argument("--quiet", action="store_true", help="no progress bar while indexing")
    sp.add_argument("--footage", action="append", default=None, metavar="PATH",
                    help="video file or folder whose footage the page may show (repeatable); "
                         "an item's source must lie under one")


def _add_data_commands(add: _AddCommand) -> None:
    """Datasets, synthetic, attention-score, ablate: data and analyses."""
    sp = add("datasets")
    sp.add_argument("root", help="dataset folder (or a CSV manifest)")
    sp.add_argument("--dataset", default=None, help="force a layout instead of auto-detecting")
    sp.add_argument("--verify-images", action="store_true", help="also decode every image once")

    sp = add("synthetic")
    sp.add_argument("root", help="folder to write (created; reused when complete)")
    sp.add_argument("--seed", type=int, default=0, help="generator seed")
    sp.add_argument("--train-ids", type=int, default=100, help="training identities")
    sp.add_argument("--test-ids", type=int, default=100, help="test identities (query + gallery)")
    sp.add_argument("--images-per-id", type=int, default=20, help="images per identity (+-25%%)")
    sp.add_argument("--num-cams", type=int, default=None, help="cameras (default 6; --video: 3)")
    sp.add_argument("--height", type=int, default=None, help="image height (default 160; --video: 360)")
    sp.add_argument("--width", type=int, default=None, help="image width (default 64; --video: 640)")
    sp.add_argument("--version", type=int, default=None, choices=[1, 2],
                    help="generator version (default: hareid's default, 1)")
    sp.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    sp.add_argument("--grid", default=None, help="also save a sample grid PNG here")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    g = sp.add_argument_group("--video: a multi-camera street sequence with ground truth")
    g.add_argument("--video", action="store_true", help="write the multi-camera sequence instead")
    g.add_argument("--people", type=_positive, default=8, help="people walking the street")
    g.add_argument("--frames", type=_positive, default=300, help="frames per camera")
    g.add_argument("--fps", type=float, default=10.0, help="frame rate")
    g.add_argument("--format", default="frames", choices=["frames", "video"],
                   help="MOT sequences of JPEG frames, or one MJPG .avi per camera")
    g.add_argument("--hard-negatives", type=float, default=0.0, metavar="FRAC",
                   help="share of people in look-alike pairs (differ in one detail: bag, shoes, hair...)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing ROOT")

    sp = add("attention-score")
    sp.add_argument("run_dir", help="a run folder trained on the synthetic benchmark")
    sp.add_argument("--num-images", type=int, default=200, help="test images scored")

    sp = add("ablate", _OVERRIDES)
    sp.add_argument("--output", default="runs/ablation", help="folder for the runs and the table")
    sp.add_argument("--data-root", default=None,
                    help="a synthetic tree written by `hareid synthetic` (default: the demo's cache)")
    sp.add_argument("--config", default="hacnn_synthetic", help="recipe name or YAML file")
    sp.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds per variant")
    sp.add_argument("--variants", nargs="+", default=None,
                    help="variants to train (default: none soft hard full no_cross; also soft_sigmoid "
                         "full_sigmoid full_temperature soft_spatial full_spatial soft_guided full_guided)")
    sp.add_argument("--curve-every", type=int, default=1,
                    help="evaluate every N epochs for the learning curves (0: only at the end)")
    sp.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")


def _add_footage_commands(add: _AddCommand) -> None:
    """Tracklets, adapt: your own footage."""
    sp = add("tracklets")
    sp.add_argument("footage", nargs="+", help="video files, frame folders or MOT sequence folders")
    sp.add_argument("--out", required=True, help="tracklets folder to write (a new dataset folder)")
    sp.add_argument("--rows", type=int, default=20, help="tracklets listed in the printed summary")
    _add_footage_options(sp)

    sp = add("adapt", _OVERRIDES + "\nAdaptation keys: adapt.holdout, adapt.val_gap, adapt.merge, "
             "adapt.merge_quantile, adapt.sampler, adapt.spread, adapt.min_crops, adapt.iters_per_epoch")
    sp.add_argument("checkpoint", help="a hareid checkpoint or a torchreid HACNN checkpoint")
    sp.add_argument("footage", nargs="+", metavar="FOOTAGE",
                    help="a tracklets folder, or videos / frame folders / MOT sequences; "
                         "then KEY=VALUE overrides")
    sp.add_argument("--out", required=True, help="run folder to write")
    sp.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=argparse.SUPPRESS)
    sp.set_defaults(trailing_overrides=True)
    _add_footage_options(sp)


def _dedent(doc: str) -> str:
    import textwrap

    first, _, rest = doc.partition("\n")
    return first + ("\n" + textwrap.dedent(rest) if rest else "")


def _version() -> str:
    from hareid import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 user error, 130 interrupted)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # KEY=VALUE items after options (`hareid adapt CKPT FOOTAGE --out RUN k=v`)
        if getattr(args, "trailing_overrides", False) and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    previous = _stop_on_sigterm()
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("hareid: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one line unless --debug
        if args.debug:
            traceback.print_exc()
        print(f"hareid: error: {_one_line(e, args.debug)}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _stop_on_sigterm() -> Any:
    """The one signal policy of every command: SIGTERM acts as Ctrl-C (KeyboardInterrupt), so that
    cleanup runs (temporary folders removed, partial indexes undone) and the exit code is 130.
    ``train`` and ``adapt`` install their own handlers while training (checkpoint, then 130).
    Returns the handler it replaced (None off the main thread, where signals cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_interrupt)


def _one_line(e: BaseException, debug: bool = False) -> str:
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return f"no space left on device writing {e.filename or 'output'}; free space or pick another output folder"
    text = str(e).strip().splitlines()
    if isinstance(e, HareidError):
        return text[0] if text else type(e).__name__
    if isinstance(e, FileNotFoundError) and e.filename:
        return f"{e.filename}: no such file or folder"
    msg = f"{type(e).__name__}: {text[0] if text else ''}"
    return msg if debug else f"{msg} (run with --debug for the traceback)"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
