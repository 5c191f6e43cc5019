"""Tests for hareid.analysis.report: the self-contained HTML page, with and without model/data."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import yaml

from hareid.analysis.report import Ranking, format_metric, render_report, write_report
from tests.helpers.toys import EVAL, EXPECTED, TinyAttnModel, fake_boxes, make_ranking, make_run


def img_srcs(page: str) -> list[str]:
    return re.findall(r'<img[^>]*\ssrc="([^"]*)"', page)


def test_format_metric() -> None:
    assert format_metric(0.8734) == "87.34"
    assert format_metric(87.34, scale=1.0) == "87.34"
    assert format_metric(None) == "–" and format_metric(float("nan")) == "–"


def test_best_and_worst_and_from_eval_result() -> None:
    q = SimpleNamespace(pids=np.array([1, 2, 3, 4]), camids=np.zeros(4), paths=list("abcd"))
    g = SimpleNamespace(pids=np.array([1, 2]), camids=np.ones(2), paths=["x", "y"])
    rank = SimpleNamespace(ap=np.array([0.5, 0.9, 0.1]), valid=np.array([True, False, True, True]))
    ev = SimpleNamespace(rank=rank, query=q, gallery=g, distmat=np.zeros((4, 2)))
    ranking = Ranking.from_eval_result(ev)
    assert np.isnan(ranking.ap[1]) and ranking.ap[2] == 0.9
    assert ranking.best_and_worst(2) == ([2, 0], [3, 0])


def test_render_report_full(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    ranking = make_ranking(tmp_path / "imgs")
    path = render_report(
        run / "report", title=run.name, config=yaml.safe_load((run / "config.yaml").read_text()),
        eval_metrics=EVAL, metrics_jsonl=run / "metrics.jsonl", model=TinyAttnModel(),
        attention_images=torch.randn(3, 3, 64, 32), ranking=ranking, num_ranked=2,
        boxes_fn=fake_boxes,
    )
    page = path.read_text()
    assert path == run / "report" / "index.html"
    table = page[page.index('id="metrics"'):page.index("</table>")]
    for key, text in EXPECTED.items():
        assert f'data-key="{key}">{text}</td>' in table
    srcs = img_srcs(page)
    assert len(srcs) == 6  # curves, CMC, attention grid + one image, best + worst ranked
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "http" not in "".join(srcs) and "<link" not in page and "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # config values escaped
    assert "run_&lt;demo&gt;" in page  # title escaped
    assert 'id="missing"' not in page
    for heading in ("Metrics", "Plots", "Attention gallery", "Ranked lists", "Configuration"):
        assert f"<h2>{heading}</h2>" in page


def test_write_report_without_checkpoint(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    page = write_report(run).read_text()
    assert all(f">{v}</td>" in page for v in EXPECTED.values())
    assert len(img_srcs(page)) == 2  # training curves + CMC
    missing = page[page.index('id="missing"'):]
    assert "no checkpoint at" in missing and "best.pt" in missing


def test_write_report_explicit_inputs_and_empty_run(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    ranking = make_ranking(tmp_path / "imgs")
    page = write_report(run, tmp_path / "out", num_attention_images=0, num_ranked=1,
                        ranking=ranking).read_text()
    assert "<h2>Ranked lists</h2>" in page and "Attention gallery</h2>" not in page
    assert "disabled (num_attention_images=0)" in page
    # an empty folder still renders, listing everything as missing
    empty = tmp_path / "empty"
    empty.mkdir()
    page = write_report(empty).read_text()
    for what in ("no eval.json", "no metrics.jsonl", "no config.yaml", "no checkpoint"):
        assert what in page


def test_write_report_from_checkpoint(tmp_path: Path, monkeypatch) -> None:
    """The run-folder path: model rebuilt from best.pt; an unreadable dataset is reported."""
    import hareid.models.loading
    from hareid.checkpoint import save_checkpoint

    loaded = []

    def load_model(path: object) -> tuple[TinyAttnModel, dict]:  # the checkpoint is read as the API reads it
        ckpt = hareid.checkpoint.load_checkpoint(path)
        loaded.append(ckpt["model"])
        return TinyAttnModel(), {"config": ckpt["config"], "height": 32, "width": 16,
                                 "mean": (0.5,) * 3, "std": (0.25,) * 3}

    monkeypatch.setattr(hareid.models.loading, "load_model", load_model)
    run = make_run(tmp_path)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    save_checkpoint({"state_dict": TinyAttnModel().state_dict(), "config": cfg,
                     "model": {"name": "tiny", "num_classes": 5}}, run / "checkpoints" / "best.pt")
    page = write_report(run).read_text()
    assert loaded == [{"name": "tiny", "num_classes": 5}]
    missing = page[page.index('id="missing"'):page.index("</section>", page.index('id="missing"'))]
    assert "(dataset)" in missing and "no checkpoint" not in missing
    # a corrupt checkpoint is reported, not raised
    monkeypatch.undo()
    (run / "checkpoints" / "best.pt").write_bytes(b"not a checkpoint")
    page = write_report(run).read_text()
    assert "(model)" in page and ">87.34</td>" in page
