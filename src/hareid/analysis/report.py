"""One self-contained HTML page per run: config, metrics, plots, attention gallery, ranked lists.

``write_report(RUN)`` reads the run folder written by the engine (``config.yaml``,
``metrics.jsonl``, ``eval.json``, ``checkpoints/best.pt``) and writes ``RUN/report/index.html``.
Images are inlined as base64 ``data:`` URIs and the CSS is inline, so the page opens offline and
can be mailed as one file; it needs no JavaScript.

The parts that need a model or data take explicit inputs (:func:`render_report`,
:func:`attention_html`, :func:`ranked_html`, :class:`Ranking`); only :func:`write_report` builds
them from the run folder (model from the checkpoint, images and features from the dataset named
in the config). Whatever cannot be built is listed on the page under "Not shown" with the reason;
the rest still renders.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from hareid.analysis import visualize as viz

__all__ = [
    "METRIC_COLUMNS",
    "Ranking",
    "attention_html",
    "format_metric",
    "img_tag",
    "ranked_html",
    "render_report",
    "write_report",
]

#: (key in eval.json, column header) of the metrics table.
METRIC_COLUMNS: tuple[tuple[str, str], ...] = (
    ("rank1", "Rank-1"),
    ("rank5", "Rank-5"),
    ("rank10", "Rank-10"),
    ("mAP", "mAP"),
    ("mINP", "mINP"),
)

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f4f5f7;
color:#1d2330;line-height:1.45}
main{max-width:1180px;margin:0 auto;padding:24px 28px 48px}
header{border-bottom:2px solid #d9dde4;margin-bottom:8px}
h1{font-size:1.6em;margin:0 0 4px}
h2{font-size:1.2em;margin:28px 0 10px;padding-bottom:4px;border-bottom:1px solid #d9dde4}
h3{font-size:1em;margin:16px 0 6px}
.sub{color:#5b6474;font-size:.9em;margin:0 0 12px}
section{background:#fff;border:1px solid #e1e4ea;border-radius:8px;padding:4px 18px 16px;
margin-top:18px}
table.metrics{border-collapse:collapse;margin:8px 0}
table.metrics th,table.metrics td{padding:6px 16px;text-align:right;border-bottom:1px solid #e1e4ea}
table.metrics th{background:#eef1f5;font-weight:600}
table.metrics td{font-variant-numeric:tabular-nums;font-size:1.1em}
figure{margin:10px 0 14px}
.row{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}
figure img{max-width:100%;height:auto;display:block;border:1px solid #e1e4ea;border-radius:4px;
background:#fff}
figcaption{color:#5b6474;font-size:.85em;margin-top:4px}
.missing{background:#fff7e6;border-color:#f0c36d}
.missing li{margin:2px 0}
pre{background:#f7f8fa;border:1px solid #e1e4ea;border-radius:4px;padding:10px;overflow:auto;
font-size:.85em}
details summary{cursor:pointer;color:#2b5fb3}
.legend span{display:inline-block;margin-right:14px;font-size:.85em}
.sw{display:inline-block;width:12px;height:12px;border-radius:2px;vertical-align:-1px;
margin-right:4px}
"""


# ----------------------------------------------------------------------------- html helpers


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def img_tag(png_path: str | os.PathLike, alt: str, caption: str | None = None) -> str:
    """A ``<figure>`` with the PNG inlined as a base64 data URI."""
    data = base64.b64encode(Path(png_path).read_bytes()).decode("ascii")
    cap = f"<figcaption>{_esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{_esc(alt)}">{cap}</figure>'


def _percent_scale(metrics: Mapping[str, Any]) -> float:
    """Metrics are fractions by contract (x100 for display); a run whose values exceed 1 is in %."""
    vals = [metrics.get(k) for k, _ in METRIC_COLUMNS]
    nums = [float(v) for v in vals if isinstance(v, (int, float)) and math.isfinite(v)]
    return 1.0 if nums and max(nums) > 1.0 else 100.0


def format_metric(value: object, scale: float = 100.0) -> str:
    """Format one metric for the table (percent, 2 decimals); "–" when absent."""
    if isinstance(value, (int, float)) and math.isfinite(value):
        return f"{float(value) * scale:.2f}"
    return "–"


def _metrics_table(metrics: Mapping[str, Any]) -> str:
    scale = _percent_scale(metrics)
    head = "".join(f"<th>{_esc(h)} (%)</th>" for _, h in METRIC_COLUMNS)
    cells = "".join(
        f'<td data-key="{_esc(k)}">{_esc(format_metric(metrics.get(k), scale))}</td>'
        for k, _ in METRIC_COLUMNS
    )
    return f'<table class="metrics" id="metrics"><tr>{head}</tr><tr>{cells}</tr></table>'


def _config_block(config: Mapping[str, Any]) -> str:
    try:
        import yaml

        text = yaml.safe_dump(dict(config), sort_keys=False, default_flow_style=False)
    except Exception:
        text = json.dumps(config, indent=2, default=str)
    return f"<details open><summary>config.yaml</summary><pre>{_esc(text)}</pre></details>"


# ----------------------------------------------------------------------------- data-needing parts


@dataclass
class Ranking:
    """What ranked lists need: distances, query/gallery identities and image paths, per-query AP.

    ``ap`` has one entry per query (NaN for queries without a valid match).
    """

    distmat: np.ndarray
    q_pids: np.ndarray
    g_pids: np.ndarray
    q_camids: np.ndarray
    g_camids: np.ndarray
    q_paths: Sequence[str]
    g_paths: Sequence[str]
    ap: np.ndarray

    @classmethod
    def from_features(cls, query: Any, gallery: Any, distmat: np.ndarray, rank: Any) -> Ranking:
        """From two ``FeatureSet`` s, the distance matrix and a ``RankResult`` (ap over valid
        queries + ``valid`` mask)."""
        q_pids = np.asarray(query.pids)
        ap_full = np.full(len(q_pids), np.nan)
        valid = np.asarray(rank.valid, dtype=bool)
        ap_full[valid] = np.asarray(rank.ap, dtype=float)
        return cls(
            np.asarray(distmat), q_pids, np.asarray(gallery.pids), np.asarray(query.camids),
            np.asarray(gallery.camids), list(query.paths), list(gallery.paths), ap_full,
        )

    @classmethod
    def from_eval_result(cls, result: Any) -> Ranking:
        """From an :class:`~hareid.evaluate.EvalResult` (its RankResult, FeatureSets and distances)."""
        return cls.from_features(result.query, result.gallery, result.distmat, result.rank)

    def best_and_worst(self, n: int) -> tuple[list[int], list[int]]:
        """Indices of the ``n`` queries with the highest and the lowest AP (valid queries only)."""
        idx = np.flatnonzero(np.isfinite(self.ap))
        order = idx[np.argsort(-self.ap[idx], kind="stable")]
        return [int(i) for i in order[:n]], [int(i) for i in order[::-1][:n]]


def attention_html(
    model: nn.Module,
    images: Tensor,
    tmp_dir: str | os.PathLike,
    *,
    boxes_fn: viz.BoxesFn | None = None,
) -> str:
    """Attention gallery: the batch grid and, for the first image, all stages side by side."""
    grid = viz.plot_attention(model, images, Path(tmp_dir) / "attention.png", boxes_fn=boxes_fn)
    one = viz.plot_attention_stages(
        model, images[0], Path(tmp_dir) / "attention_one.png", boxes_fn=boxes_fn
    )
    return (
        '<div class="legend"><span>Heatmap: soft attention (channel mean, red = high)</span>'
        "<span>Boxes: hard-attention regions, one colour per region</span></div>"
        + '<div class="row">'
        + img_tag(grid, "attention grid",
                  f"{images.shape[0]} images; columns: input | soft attention per stage | "
                  "hard-attention regions per stage")
        + img_tag(one, "attention stages", "first image, all stages side by side")
        + "</div>"
    )


def ranked_html(
    ranking: Ranking, tmp_dir: str | os.PathLike, *, num_ranked: int = 5, k: int = 10
) -> str:
    """Ranked lists of the best and the worst queries by AP."""
    best, worst = ranking.best_and_worst(num_ranked)
    if not best:
        return "<p>No query has a valid match in the gallery.</p>"
    legend = (
        '<div class="legend">'
        f'<span><i class="sw" style="background:rgb{viz.KIND_COLORS["match"]}"></i>same identity</span>'
        f'<span><i class="sw" style="background:rgb{viz.KIND_COLORS["wrong"]}"></i>different identity</span>'
        f'<span><i class="sw" style="background:rgb{viz.KIND_COLORS["junk"]}"></i>'
        "ignored by the protocol (same identity and camera, or junk); not ranked</span></div>"
    )
    out = [legend]
    for name, idx in (("Best queries", best), ("Worst queries", worst)):
        png = viz.plot_ranked_lists(
            ranking.q_paths, ranking.g_paths, ranking.distmat, ranking.q_pids, ranking.g_pids,
            ranking.q_camids, ranking.g_camids, idx, k,
            out_path=Path(tmp_dir) / f"ranked_{name.split()[0].lower()}.png",
            titles=[f"AP {100 * ranking.ap[i]:.1f}%" for i in idx],
        )
        out.append(f"<h3>{_esc(name)} (by AP)</h3>" + img_tag(png, name.lower()))
    return "".join(out)


def render_report(
    out_dir: str | os.PathLike,
    *,
    title: str,
    config: Mapping[str, Any] | None = None,
    eval_metrics: Mapping[str, Any] | None = None,
    metrics_jsonl: str | os.PathLike | None = None,
    model: nn.Module | None = None,
    attention_images: Tensor | None = None,
    ranking: Ranking | None = None,
    num_ranked: int = 5,
    notes: Sequence[str] = (),
    boxes_fn: viz.BoxesFn | None = None,
) -> Path:
    """Write ``out_dir/index.html`` from explicit inputs; absent inputs become "Not shown" notes."""
    notes = list(notes)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sections: list[str] = []

    def part(label: str, fn: Callable[[], str]) -> str | None:
        try:
            return fn()
        except Exception as e:
            notes.append(f"{label}: failed ({type(e).__name__}: {e})")
            return None

    with tempfile.TemporaryDirectory(prefix="hareid_report_") as tmp:
        if eval_metrics:
            sections.append(f"<section><h2>Metrics</h2>{_metrics_table(eval_metrics)}</section>")
        else:
            notes.append("metrics table: no eval.json")

        plots: list[str] = []
        if metrics_jsonl is not None and Path(metrics_jsonl).is_file():
            fig = part("training curves", lambda: img_tag(
                viz.plot_training_curves(metrics_jsonl, Path(tmp) / "curves.png"),
                "training curves", "loss, training accuracy, learning rate, Rank-1 and mAP"))
            plots += [fig] if fig else []
        else:
            notes.append("training curves: no metrics.jsonl")
        cmc = (eval_metrics or {}).get("cmc")
        if cmc:
            fig = part("CMC", lambda: img_tag(
                viz.plot_cmc({title: cmc}, Path(tmp) / "cmc.png"), "CMC curve"))
            plots += [fig] if fig else []
        else:
            notes.append("CMC curve: no cmc list in eval.json")
        if plots:
            sections.append("<section><h2>Plots</h2>" + "".join(plots) + "</section>")

        if model is not None and attention_images is not None and len(attention_images):
            body = part("attention gallery", lambda: attention_html(
                model, attention_images, tmp, boxes_fn=boxes_fn))
            if body:
                sections.append(f"<section><h2>Attention gallery</h2>{body}</section>")
        elif not any("attention gallery" in n for n in notes):
            notes.append("attention gallery: no model or no images")

        if ranking is not None:
            body = part("ranked lists", lambda: ranked_html(ranking, tmp, num_ranked=num_ranked))
            if body:
                sections.append(f"<section><h2>Ranked lists</h2>{body}</section>")
        elif not any("ranked lists" in n for n in notes):
            notes.append("ranked lists: no distances / features")

    if config:
        sections.append(f"<section><h2>Configuration</h2>{_config_block(config)}</section>")
    else:
        notes.append("configuration: no config.yaml")

    missing = ""
    if notes:
        items = "".join(f"<li>{_esc(n)}</li>" for n in notes)
        missing = f'<section class="missing" id="missing"><h2>Not shown</h2><ul>{items}</ul></section>'
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_esc(title)} · hareid report</title><style>{_CSS}</style></head><body><main>"
        f"<header><h1>{_esc(title)}</h1><p class=\"sub\">hareid report · generated {stamp}</p></header>"
        + missing + "".join(sections) + "</main></body></html>\n"
    )
    from hareid.fileio import atomic_write_text

    return atomic_write_text(out / "index.html", page)


# ----------------------------------------------------------------------------- run folder


def _read_yaml(path: Path) -> dict | None:
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else None


def _section(cfg: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    sub = cfg.get(name)
    return sub if isinstance(sub, Mapping) else {}


def _data_from_config(cfg: Mapping[str, Any], info: Mapping[str, Any]) -> tuple[Any, Any]:
    """(dataset, eval transform) named by the run's config (the dataset is only read, never written)."""
    from hareid.data import build_dataset, build_transforms

    data = _section(cfg, "data")
    if not data.get("name") or not data.get("root"):
        raise KeyError("config has no data.name / data.root")
    dataset = build_dataset(data["name"], data["root"], verbose=False)
    _, eval_tf = build_transforms(info["height"], info["width"], mean=info["mean"], std=info["std"])
    return dataset, eval_tf


def _attention_images(dataset: Any, eval_tf: Any, n: int) -> Tensor:
    from hareid.data import ImageDataset

    records = dataset.query
    pick = np.linspace(0, len(records) - 1, num=min(n, len(records))).round().astype(int)
    ds = ImageDataset([records[i] for i in pick], eval_tf)
    return torch.stack([ds[i][0] for i in range(len(ds))])


def _ranking_from_model(model: nn.Module, dataset: Any, info: Mapping[str, Any], cfg: Mapping) -> Ranking:
    """Evaluate ``model`` on the run's query/gallery split with the run's eval settings."""
    from hareid.data.loader import build_eval_loaders
    from hareid.evaluate import evaluate

    ev, data = _section(cfg, "eval"), _section(cfg, "data")
    loaders = build_eval_loaders(dataset, info["height"], info["width"], int(data.get("test_batch_size", 128)),
                                 0, bool(data.get("skip_bad_images", False)), info["mean"], info["std"])
    res = evaluate(model, *loaders, metric=ev.get("metric", "euclidean"), flip=bool(ev.get("flip", False)),
                   rerank=bool(ev.get("rerank", False)), protocol=ev.get("protocol", "market1501"),
                   max_rank=int(ev.get("max_rank", 50)))
    return Ranking.from_eval_result(res)


def write_report(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    num_attention_images: int = 8,
    num_ranked: int = 5,
    *,
    model: nn.Module | None = None,
    attention_images: Tensor | None = None,
    ranking: Ranking | None = None,
    eval_result: Any = None,
) -> Path:
    """Write the run's report to ``out_dir`` (default ``RUN/report``) and return ``index.html``.

    Explicit ``model`` / ``attention_images`` / ``ranking`` (or an ``EvalResult``) are used as
    given; otherwise they are built from ``checkpoints/best.pt`` and the dataset in its config
    (this evaluates the model on query and gallery). What can't be built is listed on the page.
    """
    run = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run / "report"
    notes: list[str] = []

    def load(label: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as e:
            notes.append(f"{label}: {type(e).__name__}: {e}")
            return None

    config = load("config.yaml", lambda: _read_yaml(run / "config.yaml")) \
        if (run / "config.yaml").is_file() else None
    eval_metrics = load("eval.json", lambda: json.loads((run / "eval.json").read_text("utf-8"))) \
        if (run / "eval.json").is_file() else None
    if ranking is None and eval_result is not None:
        ranking = load("ranked lists (EvalResult)", lambda: Ranking.from_eval_result(eval_result))

    if num_attention_images <= 0:
        attention_images = None
        notes.append("attention gallery: disabled (num_attention_images=0)")
    if num_ranked <= 0:
        ranking = None
        notes.append("ranked lists: disabled (num_ranked=0)")
    want_images = num_attention_images > 0 and attention_images is None
    want_ranking = num_ranked > 0 and ranking is None
    info: dict = {}
    ckpt = run / "checkpoints" / "best.pt"
    if model is None and (num_attention_images > 0 or want_ranking):
        if ckpt.is_file():
            from hareid.models.loading import load_model

            loaded = load("attention gallery and ranked lists (model)", lambda: load_model(ckpt))
            if loaded is not None:
                model, info = loaded
        else:
            notes.append(f"attention gallery and ranked lists: no checkpoint at {ckpt}")
    if model is not None and not info and config:  # a model given without its checkpoint's info
        from hareid.models import model_entry

        entry, data = model_entry(_section(config, "model").get("name", "hacnn")), _section(config, "data")
        info = {"config": config, "height": data.get("height") or entry.input_size[0],
                "width": data.get("width") or entry.input_size[1], "mean": entry.mean, "std": entry.std}
    if model is not None and (want_images or want_ranking) and info:
        cfg = info.get("config") or config or {}
        data = load("attention gallery and ranked lists (dataset)", lambda: _data_from_config(cfg, info))
        if data is not None:
            dataset, eval_tf = data
            if want_images:
                attention_images = load("attention gallery", lambda: _attention_images(
                    dataset, eval_tf, num_attention_images))
            if want_ranking:
                ranking = load("ranked lists", lambda: _ranking_from_model(model, dataset, info, cfg))
    if attention_images is not None:
        attention_images = attention_images[:num_attention_images]

    return render_report(
        out, title=run.resolve().name, config=config, eval_metrics=eval_metrics,
        metrics_jsonl=run / "metrics.jsonl", model=model, attention_images=attention_images,
        ranking=ranking, num_ranked=num_ranked, notes=notes,
    )
