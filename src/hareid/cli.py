"""The ``hareid`` command: ``hareid demo|train|eval|visualize|report|export|index|search|datasets|...``.

Every sub-command is a small function over the library; errors a user can fix end in one line and a
non-zero exit (``--debug`` shows the traceback). Heavy imports happen inside the commands so that
``hareid --help`` is instant.
"""

from __future__ import annotations

import argparse
import errno
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from hareid import CACHE_DIR as DEFAULT_CACHE
from hareid.errors import HareidError

_EPILOG_OVERRIDES = "Overrides are dotted config keys, e.g.  train.epochs=3 model.num_regions=2"


# ---------------------------------------------------------------------------------------------- #
# commands
# ---------------------------------------------------------------------------------------------- #
def cmd_demo(args: argparse.Namespace) -> int:
    """Synthetic benchmark -> train HA-CNN -> evaluate -> HTML report, in minutes on a CPU."""
    from hareid.config import load_config
    from hareid.data.synthetic import write_synthetic
    from hareid.engine import Trainer
    from hareid.report import write_report

    data_root = Path(args.data_root or DEFAULT_CACHE / "synthetic")
    print(f"[hareid] synthetic benchmark -> {data_root}")
    write_synthetic(data_root, seed=args.seed)
    overrides = [
        "data.name=synthetic",
        f"data.root={data_root}",
        f"output_dir={args.output}",
        f"train.seed={args.seed}",
        *args.overrides,
    ]
    cfg = load_config(args.config, overrides)
    trainer = Trainer(cfg)
    result = trainer.fit()
    run_dir = Path(cfg.output_dir)
    report = write_report(run_dir, eval_result=trainer.last_result)
    _print_summary(result, run_dir, report)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train from a config file (or a shipped recipe name) with dotted overrides."""
    from hareid.config import load_config
    from hareid.engine import Trainer

    cfg = load_config(args.config, args.overrides)
    result = Trainer(cfg).fit()
    _print_summary(result, Path(cfg.output_dir), None)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a checkpoint on a dataset: metrics table on screen and a JSON file."""
    from hareid.api import evaluate_checkpoint

    result = evaluate_checkpoint(
        args.checkpoint,
        dataset=args.dataset,
        root=args.root,
        flip=args.flip,
        rerank=args.rerank,
        metric=args.metric,
        protocol=args.protocol,
        batch_size=args.batch_size,
    )
    print(result.table())
    out = Path(args.json or Path(args.checkpoint).with_suffix(".eval.json"))
    out.write_text(json.dumps(result.to_dict(), indent=2))
    print(f"[hareid] metrics written to {out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Write the self-contained HTML report of a run folder."""
    from hareid.report import write_report

    path = write_report(Path(args.run_dir))
    print(f"[hareid] report: {path}")
    return 0


def cmd_visualize(args: argparse.Namespace) -> int:
    """Draw soft-attention heatmaps and hard-attention regions for some images."""
    from hareid.api import load_images, load_model
    from hareid.visualize import plot_attention

    model, info = load_model(args.checkpoint)
    images = load_images(args.images, info["height"], info["width"])
    out = plot_attention(model, images, Path(args.out))
    print(f"[hareid] attention picture: {out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export a checkpoint to ONNX or TorchScript and check it against the eager model."""
    from hareid.api import load_model
    from hareid.export import export_model

    model, info = load_model(args.checkpoint)
    h, w = args.height or info["height"], args.width or info["width"]
    out = Path(args.out or Path(args.checkpoint).with_suffix(".onnx" if args.format == "onnx" else ".ts"))
    report = export_model(model, out, fmt=args.format, height=h, width=w, opset=args.opset)
    print(f"[hareid] exported {args.format} -> {out}; max |export - eager| = {report['max_abs_diff']:.2e}")
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    """Embed a gallery and save a FAISS index with its metadata."""
    from hareid.api import build_gallery_index

    index = build_gallery_index(
        args.checkpoint, args.root, dataset=args.dataset, split=args.split, ivf=args.ivf
    )
    index.save(Path(args.out))
    print(f"[hareid] index of {len(index)} images -> {args.out}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    """Query images -> top-k gallery matches from a saved index."""
    from hareid.api import search_images

    for query, hits in search_images(args.checkpoint, args.index, args.images, k=args.k):
        print(query)
        for rank, (path, score) in enumerate(hits, 1):
            print(f"  {rank:>3}  {score:7.4f}  {path}")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    """Recognise and check a dataset folder, print its statistics table."""
    from hareid.data import build_dataset, detect_dataset

    name = args.dataset or detect_dataset(args.root)
    if name is None:
        raise HareidError(
            f"{args.root}: not a recognised dataset layout (Market-1501, DukeMTMC-reID, CUHK03, MSMT17, "
            "folder, csv); pass --dataset NAME or see `hareid datasets --help`"
        )
    ds = build_dataset(name, args.root)
    print(ds.summary())
    return 0


def cmd_synthetic(args: argparse.Namespace) -> int:
    """Write the built-in synthetic pedestrian benchmark (Market-1501 layout)."""
    from hareid.data.synthetic import write_synthetic

    root = write_synthetic(
        Path(args.root),
        seed=args.seed,
        num_train_ids=args.train_ids,
        num_test_ids=args.test_ids,
        images_per_id=args.images_per_id,
    )
    print(f"[hareid] synthetic benchmark at {root}")
    return 0


def cmd_attention_score(args: argparse.Namespace) -> int:
    """How much soft attention lands on the person, and how hard regions cover body parts."""
    from hareid.attention_score import score_run

    table = score_run(Path(args.run_dir), num_images=args.num_images)
    print(table)
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    """Train the attention variants with the same budget and seeds; print mean +- spread."""
    from hareid.ablation import run_ablation

    table = run_ablation(
        Path(args.output), seeds=args.seeds, variants=args.variants, overrides=args.overrides,
        data_root=args.data_root,
    )
    print(table)
    return 0


# ---------------------------------------------------------------------------------------------- #
# parser
# ---------------------------------------------------------------------------------------------- #
def _print_summary(result: dict, run_dir: Path, report: Path | None) -> None:
    r1, mAP = result.get("rank1"), result.get("mAP")
    if r1 is not None and mAP is not None:
        print(f"[hareid] Rank-1 {100 * r1:.1f}%  mAP {100 * mAP:.1f}%")
    print(f"[hareid] run folder: {run_dir}")
    if report is not None:
        print(f"[hareid] report: {report}")


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = argparse.ArgumentParser(
        prog="hareid",
        description="Harmonious attention (HA-CNN) for person re-identification.",
        formatter_class=fmt,
    )
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Callable[[argparse.Namespace], int], **kw) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=fn.__doc__.splitlines()[0], description=fn.__doc__,
                            formatter_class=fmt, **kw)
        sp.set_defaults(func=fn)
        return sp

    sp = add("demo", cmd_demo, epilog=_EPILOG_OVERRIDES)
    sp.add_argument("--output", default="runs/demo", help="run folder")
    sp.add_argument("--data-root", default=None, help=f"where the synthetic set is cached (default {DEFAULT_CACHE}/synthetic)")
    sp.add_argument("--config", default="hacnn_synthetic", help="recipe name or YAML file")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("overrides", nargs="*", help="dotted config overrides")

    sp = add("train", cmd_train, epilog=_EPILOG_OVERRIDES)
    sp.add_argument("--config", required=True, help="YAML file or shipped recipe name (e.g. hacnn_market1501)")
    sp.add_argument("overrides", nargs="*", help="dotted config overrides")

    sp = add("eval", cmd_eval)
    sp.add_argument("checkpoint", help="a hareid checkpoint (.pt) or a torchreid HACNN checkpoint")
    sp.add_argument("root", help="dataset root folder")
    sp.add_argument("--dataset", default=None, help="dataset name (auto-detected when omitted)")
    sp.add_argument("--metric", default="euclidean", choices=["euclidean", "cosine"])
    sp.add_argument("--protocol", default="market1501", choices=["market1501", "market1501_official", "cuhk03"])
    sp.add_argument("--flip", action="store_true", help="flip test-time augmentation")
    sp.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking")
    sp.add_argument("--batch-size", type=int, default=64)
    sp.add_argument("--json", default=None, help="where to write the metrics JSON")

    sp = add("report", cmd_report)
    sp.add_argument("run_dir", help="a run folder written by `hareid train` or `hareid demo`")

    sp = add("visualize", cmd_visualize)
    sp.add_argument("checkpoint")
    sp.add_argument("images", nargs="+", help="image files")
    sp.add_argument("--out", default="attention.png")

    sp = add("export", cmd_export)
    sp.add_argument("checkpoint")
    sp.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    sp.add_argument("--out", default=None)
    sp.add_argument("--height", type=int, default=None)
    sp.add_argument("--width", type=int, default=None)
    sp.add_argument("--opset", type=int, default=17)

    sp = add("index", cmd_index)
    sp.add_argument("checkpoint")
    sp.add_argument("root", help="dataset root (its gallery split is indexed) or an image folder")
    sp.add_argument("--dataset", default=None)
    sp.add_argument("--split", default="gallery", choices=["gallery", "query", "train"])
    sp.add_argument("--ivf", type=int, default=0, help="IVF lists (0 = exact inner product)")
    sp.add_argument("--out", required=True, help="index folder")

    sp = add("search", cmd_search)
    sp.add_argument("checkpoint")
    sp.add_argument("index", help="index folder written by `hareid index`")
    sp.add_argument("images", nargs="+")
    sp.add_argument("-k", type=int, default=10)

    sp = add("datasets", cmd_datasets)
    sp.add_argument("root")
    sp.add_argument("--dataset", default=None, help="force a layout instead of auto-detecting")

    sp = add("synthetic", cmd_synthetic)
    sp.add_argument("root")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--train-ids", type=int, default=100)
    sp.add_argument("--test-ids", type=int, default=100)
    sp.add_argument("--images-per-id", type=int, default=20)

    sp = add("attention-score", cmd_attention_score)
    sp.add_argument("run_dir")
    sp.add_argument("--num-images", type=int, default=200)

    sp = add("ablate", cmd_ablate, epilog=_EPILOG_OVERRIDES)
    sp.add_argument("--output", default="runs/ablation")
    sp.add_argument("--data-root", default=None)
    sp.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    sp.add_argument("--variants", nargs="+", default=None, help="subset of variants (default all)")
    sp.add_argument("overrides", nargs="*")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("hareid: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # turned into one line unless --debug
        if args.debug:
            raise
        print(f"hareid: error: {_one_line(e)}", file=sys.stderr)
        return 2


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return f"no space left on device writing {e.filename or 'output'}; free space or pick another --output"
    if isinstance(e, HareidError):
        return str(e)
    text = str(e).strip().splitlines()
    msg = f"{type(e).__name__}: {text[0] if text else ''}"
    return f"{msg} (run with --debug for the traceback)"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
