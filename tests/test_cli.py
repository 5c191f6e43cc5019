"""The ``hareid`` command, run in-process on a tiny synthetic set and a tiny training run."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from hareid.cli import _one_line, build_parser, main
from tests.helpers.tiny import SYNTHETIC, TRAIN_OVERRIDES, Tiny

COMMANDS = ["demo", "train", "eval", "report", "visualize", "export", "index", "search", "serve",
            "datasets", "synthetic", "attention-score", "ablate", "tracklets", "adapt", "link"]


def run(capsys: pytest.CaptureFixture, *argv: object) -> tuple[int, str, str]:
    """``hareid ARGV`` in-process -> (exit code, stdout, stderr)."""
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def error_line(err: str) -> str:
    """The error output must be exactly one line (progress bars aside) and no traceback."""
    lines = [ln for ln in err.splitlines() if ln.strip() and "it/s]" not in ln]
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith("hareid: error: ")
    return lines[0]


def link_copy(src: Path, dst: Path) -> Path:
    """A writable copy of a run folder (hard links: fast, no extra disk)."""
    return Path(shutil.copytree(src, dst, copy_function=os.link))


# ------------------------------------------------------------------------------------------ help


def test_parser_knows_every_command() -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert sorted(sub.choices) == sorted(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_command(command: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: hareid {command}")
    assert "examples:" in out and f"hareid {command}" in out.split("examples:")[1]
    description = out.split("\n\n")[1]
    assert len(description) > 40  # a sentence about what it does, not just the usage


def test_top_level_help_lists_commands(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert command in out


def test_python_dash_m_hareid(tmp_path: Path) -> None:
    ok = subprocess.run([sys.executable, "-m", "hareid", "--help"], capture_output=True, text=True,
                        timeout=60)
    assert ok.returncode == 0 and "usage: hareid" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "hareid", "datasets", str(tmp_path / "nope")],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        f"hareid: error: {tmp_path / 'nope'}: no such folder; pass the folder that holds the dataset"]


# -------------------------------------------------------------------------------- the commands


def test_train_writes_the_run_folder(tiny: Tiny) -> None:
    for name in ("config.yaml", "metrics.jsonl", "eval.json", "checkpoints/best.pt", "checkpoints/last.pt"):
        assert (tiny.run / name).is_file(), name
    import yaml

    cfg = yaml.safe_load((tiny.run / "config.yaml").read_text())
    assert (cfg["data"]["height"], cfg["data"]["width"], cfg["train"]["epochs"]) == (64, 32, 1)
    assert cfg["data"]["root"] == str(tiny.data)
    rows = [json.loads(line) for line in (tiny.run / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in r for r in rows) and any("rank1" in r for r in rows)


def test_demo_prints_rank1_beside_chance(tiny: Tiny, tmp_path: Path, capsys) -> None:
    rc, out, _ = run(capsys, "demo", "--data-root", tiny.data, "--output", tmp_path / "demo",
                     *TRAIN_OVERRIDES)
    assert rc == 0
    assert "(reused)" in out  # the explicit tiny tree is used as it is, not regenerated
    num_test_ids = SYNTHETIC["num_test_ids"]
    m = re.search(r"Rank-1 ([\d.]+)% \(chance ([\d.]+)% = 1/(\d+) test identities\)  mAP ([\d.]+)%", out)
    assert m, out
    assert int(m.group(3)) == num_test_ids and float(m.group(2)) == round(100 / num_test_ids, 1)
    saved = json.loads((tmp_path / "demo" / "eval.json").read_text())
    assert float(m.group(1)) == pytest.approx(100 * saved["rank1"], abs=0.051)
    assert (tmp_path / "demo" / "report" / "index.html").is_file()


def test_eval_prints_table_and_writes_json(tiny: Tiny, tmp_path: Path, capsys) -> None:
    out_json = tmp_path / "m.json"
    rc, out, _ = run(capsys, "eval", tiny.checkpoint, tiny.data, "--workers", 0, "--json", out_json)
    assert rc == 0
    metrics = json.loads(out_json.read_text())
    for key in ("rank1", "rank5", "mAP", "mINP", "cmc"):
        assert key in metrics
    assert 0 <= metrics["rank1"] <= 1 and 0 < metrics["mAP"] <= 1
    printed = {k: float(v) for k, v in re.findall(r"^(mAP|rank-1)\s+([\d.]+)$", out, re.M)}
    assert printed["rank-1"] == pytest.approx(100 * metrics["rank1"], abs=0.006)
    assert printed["mAP"] == pytest.approx(100 * metrics["mAP"], abs=0.006)
    # the devkit's interpolated AP is never higher than torchreid's (docs/evaluation.md)
    rc, _, _ = run(capsys, "eval", tiny.checkpoint, tiny.data, "--workers", 0, "--json",
                   tmp_path / "o.json", "--protocol", "market1501_official")
    official = json.loads((tmp_path / "o.json").read_text())
    assert rc == 0 and official["mAP"] <= metrics["mAP"] + 1e-9
    assert official["rank1"] == pytest.approx(metrics["rank1"])


def test_report_writes_html(tiny: Tiny, tmp_path: Path, capsys) -> None:
    rc, out, _ = run(capsys, "report", tiny.run, "--out", tmp_path / "report", "--num-images", 2)
    assert rc == 0
    html = (tmp_path / "report" / "index.html").read_text()
    assert str(tmp_path / "report" / "index.html") in out
    assert "<html" in html and "data:image/png;base64," in html


def test_visualize_writes_png(tiny: Tiny, tmp_path: Path, capsys) -> None:
    images = tiny.images("query")[:2]
    rc, out, _ = run(capsys, "visualize", tiny.checkpoint, *images, "--out", tmp_path / "a.png")
    assert rc == 0 and "2 images" in out
    with Image.open(tmp_path / "a.png") as im:
        assert im.format == "PNG" and im.height > im.width / 7  # rows = images
    rc, out, _ = run(capsys, "visualize", tiny.checkpoint, "--num-images", 3, "--out", tmp_path / "b.png")
    assert rc == 0 and "3 images" in out and (tmp_path / "b.png").is_file()


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_prints_max_difference(fmt: str, tiny: Tiny, tmp_path: Path, capsys) -> None:
    out_file = tmp_path / f"model.{fmt}"
    rc, out, _ = run(capsys, "export", tiny.checkpoint, "--format", fmt, "--out", out_file)
    assert rc == 0 and out_file.stat().st_size > 1_000_000
    m = re.search(r"max \|export - eager\| = ([\d.e+-]+)", out)
    assert m and float(m.group(1)) < 1e-4
    assert "Bx3x64x32" in out


def test_index_and_search(tiny: Tiny, tmp_path: Path, capsys) -> None:
    rc, out, _ = run(capsys, "index", tiny.checkpoint, tiny.data, "--out", tmp_path / "idx")
    gallery = [p for p in tiny.images("gallery") if not p.name.startswith("-1")]  # junk is dropped
    assert rc == 0 and f"index of {len(gallery)} images" in out
    query = gallery[len(gallery) // 2]
    rc, out, _ = run(capsys, "search", tiny.checkpoint, tmp_path / "idx", query, "-k", 3)
    assert rc == 0
    lines = out.splitlines()
    assert lines[0] == str(query) and len(lines) == 4
    rank, score, path = lines[1].split()
    assert rank == "1" and Path(path).resolve() == query.resolve() and float(score) > 0.999


def test_index_plain_image_folder(tiny: Tiny, tmp_path: Path, capsys) -> None:
    photos = tmp_path / "photos" / "nested"
    photos.mkdir(parents=True)
    for p in tiny.images("query")[:4]:
        shutil.copy(p, photos / p.name)
    rc, out, _ = run(capsys, "index", tiny.checkpoint, tmp_path / "photos", "--out", tmp_path / "idx")
    assert rc == 0 and "index of 4 images" in out


def test_datasets_detects_layouts(tiny: Tiny, tmp_path: Path, capsys) -> None:
    rc, out, _ = run(capsys, "datasets", tiny.data)
    assert rc == 0 and "layout: synthetic (detected)" in out
    query_ids = len({p.name.split("_")[0] for p in tiny.images("query")})
    assert re.search(rf"query\s+\|\s+{query_ids}\s+\|\s+{len(tiny.images('query'))}\s+\|", out), out
    market = tmp_path / "Market-1501-v15.09.15"  # the same images without synthetic.json
    for sub in ("bounding_box_train", "bounding_box_test", "query"):
        shutil.copytree(tiny.data / sub, market / sub, copy_function=os.link)
    rc, out, _ = run(capsys, "datasets", tmp_path, "--verify-images")
    assert rc == 0 and "layout: market1501 (detected)" in out and "images decode" in out
    assert out.count("\n") < 15  # the table once, not twice


def test_synthetic_writes_and_reuses(tmp_path: Path, capsys) -> None:
    args = ["synthetic", tmp_path / "syn", "--train-ids", 2, "--test-ids", 2, "--images-per-id", 4,
            "--num-cams", 2, "--height", 64, "--width", 32, "--quiet", "--grid", tmp_path / "grid.png"]
    rc, out, _ = run(capsys, *args)
    assert rc == 0 and "train" in out and "gallery" in out and (tmp_path / "grid.png").is_file()
    stamp = (tmp_path / "syn" / ".complete").stat().st_mtime_ns
    rc, _, _ = run(capsys, *args)
    assert rc == 0 and (tmp_path / "syn" / ".complete").stat().st_mtime_ns == stamp


def test_ablate_records_curves_and_resumes(tiny: Tiny, tmp_path: Path, capsys) -> None:
    import yaml

    out_dir = tmp_path / "abl"
    argv = ["ablate", "--variants", "soft", "full_sigmoid", "--seeds", 0, "--data-root", tiny.data,
            "--output", out_dir, *TRAIN_OVERRIDES, "train.epochs=2"]
    rc, out, _ = run(capsys, *argv)
    assert rc == 0 and "| full_sigmoid | 1 |" in out
    rows = [json.loads(line) for line in (out_dir / "results.jsonl").read_text().splitlines()]
    assert [r["variant"] for r in rows] == ["soft", "full_sigmoid"]
    for r in rows:  # one evaluation per epoch; the last one is the reported result
        assert [c["epoch"] for c in r["curve"]] == [1, 2] and r["epochs"] == 2
        assert r["curve"][-1]["mAP"] == pytest.approx(r["mAP"]) and r["curve"][-1]["rank1"] == pytest.approx(r["rank1"])
    cfg = yaml.safe_load((out_dir / "full_sigmoid_seed0" / "config.yaml").read_text())
    assert cfg["model"]["options"]["soft_mask"] == "sigmoid" and cfg["model"]["options"]["local_branch"] is True
    assert (out_dir / "ablation_curves.png").is_file() and (out_dir / "ablation.png").is_file()
    rc, again, _ = run(capsys, *argv)  # everything done: nothing is trained again, same table
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert rc == 0 and "ablation:" not in again and [ln for ln in again.splitlines() if ln.startswith("|")] == table


def test_attention_score(tiny: Tiny, tmp_path: Path, capsys) -> None:
    run_dir = link_copy(tiny.run, tmp_path / "run")
    rc, out, _ = run(capsys, "attention-score", run_dir, "--num-images", 8)
    assert rc == 0 and "| untrained | trained |" in out and "person_cover" in out
    scores = json.loads((run_dir / "attention_score.json").read_text())
    assert set(scores) == {"untrained", "trained"}


# ------------------------------------------------------------------------------------- errors


def _bad_checkpoints(tmp: Path) -> dict[str, Path]:
    corrupt = tmp / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint\n")
    wrong = tmp / "wrong.pt"
    torch.save({"foo": torch.zeros(3)}, wrong)
    return {"corrupt": corrupt, "wrong": wrong}


@pytest.mark.parametrize("case, argv, expected", [
    ("missing dataset", ["eval", "{ckpt}", "{tmp}/no_data", "--workers", "0"], "{tmp}/no_data: dataset folder not found"),
    ("missing dataset", ["datasets", "{tmp}/no_data"], "no such folder"),
    ("missing dataset", ["train", "--config", "hacnn_market1501", "data.root={tmp}/no_data",
                         "output_dir={tmp}/run"], "no_data: dataset folder not found"),
    ("unknown layout", ["datasets", "{tmp}"], "not a recognised dataset layout"),
    ("bad config key", ["train", "--config", "hacnn_synthetic", "train.epoch=3"], "did you mean 'train.epochs'?"),
    ("bad config value", ["train", "--config", "hacnn_synthetic", "optim.name=adamw"], "optim.name: expected one of"),
    ("bad recipe", ["train", "--config", "hacnn_synthetc"], "did you mean 'hacnn_synthetic'?"),
    ("corrupt checkpoint", ["eval", "{corrupt}", "{data}"], "corrupt.pt: not a readable checkpoint"),
    ("wrong checkpoint", ["export", "{wrong}"], "wrong.pt: neither a hareid checkpoint"),
    ("missing checkpoint", ["visualize", "{tmp}/nope.pt"], "nope.pt: checkpoint not found"),
    ("missing image", ["visualize", "{ckpt}", "{tmp}/nope.jpg"], "nope.jpg: image not found"),
    ("missing index", ["search", "{ckpt}", "{tmp}", "{tmp}/nope.jpg"], "not a saved GalleryIndex"),
    ("missing run", ["report", "{tmp}/no_run"], "run folder not found"),
    ("missing run", ["attention-score", "{tmp}/no_run"], "checkpoint not found"),
    ("unknown variant", ["ablate", "--variants", "full", "bogus"], "unknown ablation variant(s) ['bogus']"),
    ("no data for ablate", ["ablate", "--data-root", "{tmp}/none"], "none: no complete synthetic benchmark there"),
    ("version mismatch", ["train", "--config", "hacnn_synthetic", "data.root={data}", "data.options.version=2",
                          "output_dir={tmp}/run"], "holds synthetic version 1, not the 2 asked for"),
])
def test_user_errors_are_one_line(case: str, argv: list[str], expected: str, tiny: Tiny,
                                  tmp_path: Path, capsys) -> None:
    fill = {"ckpt": tiny.checkpoint, "data": tiny.data, "tmp": tmp_path, **_bad_checkpoints(tmp_path)}
    rc, _, err = run(capsys, *[a.format(**fill) for a in argv])
    assert rc == 2, case
    assert expected.format(tmp=tmp_path) in error_line(err)


def test_search_with_an_unreadable_image(tiny: Tiny, tmp_path: Path, capsys) -> None:
    rc, _, _ = run(capsys, "index", tiny.checkpoint, tiny.data, "--out", tmp_path / "idx")
    assert rc == 0
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 truncated")
    rc, _, err = run(capsys, "search", tiny.checkpoint, tmp_path / "idx", bad)
    assert rc == 2 and "broken.jpg: unreadable image" in error_line(err)


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_traceback(where: str, tmp_path: Path, capsys) -> None:
    argv = ["datasets", str(tmp_path / "nope")]
    argv = ["--debug", *argv] if where == "before" else [*argv, "--debug"]
    rc, _, err = run(capsys, *argv)
    assert rc == 2
    assert "Traceback (most recent call last)" in err and "hareid.errors.HareidError" in err
    assert err.strip().splitlines()[-1].startswith("hareid: error: ")


def test_argument_errors_exit_2(capsys) -> None:
    for argv in (["ablate", "--seeds", "x"], ["export", "x.pt", "--format", "tflite"], ["nope"], []):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_unexpected_errors_and_full_disk() -> None:
    full = OSError(errno.ENOSPC, "No space left on device", "/x/last.pt")
    assert _one_line(full) == "no space left on device writing /x/last.pt; free space or pick another output folder"
    assert _one_line(RuntimeError("boom\nmore")) == "RuntimeError: boom (run with --debug for the traceback)"
