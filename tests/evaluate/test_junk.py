"""Evaluation with one camera: the junk rules rewrite the camera slot (hareid.evaluate.junk)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hareid.cli import main
from hareid.data import build_dataset
from hareid.errors import DataError
from hareid.evaluate import evaluate_rank
from hareid.evaluate.junk import apply_junk_rule, resolve_junk_rule
from tests.helpers.tiny import Tiny


def one_camera_folder(root: Path, with_tracklets: bool = True) -> Path:
    """2 identities, one camera 'door'; each has tracklets t1 (query + gallery) and t2 (gallery)."""
    for split, items in (("query", [("t1", 0)]), ("gallery", [("t1", 1), ("t1", 2), ("t2", 3)])):
        for pid, colour in (("alice", (200, 40, 40)), ("bob", (40, 40, 200))):
            d = root / split / pid
            d.mkdir(parents=True, exist_ok=True)
            for track, frame in items:
                name = f"door_{track}_{frame:04d}.png" if with_tracklets else f"door_{track}{frame:04d}.png"
                Image.new("RGB", (32, 64), colour).save(d / name)
    return root


def test_market_rule_on_one_camera_explains_the_options(tmp_path: Path) -> None:
    ds = build_dataset("folder", one_camera_folder(tmp_path), verbose=False)
    with pytest.raises(DataError, match=r"one camera.*--junk tracklet.*--junk none"):
        resolve_junk_rule(ds, "camera")
    assert resolve_junk_rule(ds, "auto") == "tracklet"
    no_tracks = build_dataset("folder", one_camera_folder(tmp_path / "b", with_tracklets=False), verbose=False)
    with pytest.raises(DataError, match="one camera"):
        resolve_junk_rule(no_tracks, "auto")
    assert resolve_junk_rule(no_tracks, "none") == "none"


def test_tracklet_rule_hand_computed(tmp_path: Path) -> None:
    """Distances that rank, for each query: own-tracklet image, the other person, the other
    tracklet. With the own tracklet junk, the first match is at rank 2 (AP 1/2)."""
    ds = build_dataset("folder", one_camera_folder(tmp_path), verbose=False)
    q, g = apply_junk_rule(ds.query, ds.gallery, "tracklet", ds.extras["tracklet"])
    d = np.zeros((len(q), len(g)))
    for i, qr in enumerate(q):
        for j, gr in enumerate(g):
            same_track = ds.extras["tracklet"][gr.path].endswith("/t1")
            d[i, j] = (1.0 if same_track else 3.0) if gr.pid == qr.pid else 2.0
    pids = lambda rs: np.array([r.pid for r in rs])  # noqa: E731
    cams = lambda rs: np.array([r.camid for r in rs])  # noqa: E731
    res = evaluate_rank(d, pids(q), pids(g), cams(q), cams(g))
    assert res.rank(1) == 0.0 and res.rank(4) == 1.0
    assert res.mAP == pytest.approx(1 / 4)  # the only match (t2) ranks behind 3 of the other person
    none_q, none_g = apply_junk_rule(ds.query, ds.gallery, "none")
    res = evaluate_rank(d, pids(none_q), pids(none_g), cams(none_q), cams(none_g))
    assert res.rank(1) == 1.0  # near-copies of the query count: the optimistic rule


def test_eval_command_on_one_camera(tiny: Tiny, tmp_path: Path, capsys) -> None:
    root = one_camera_folder(tmp_path / "door")
    args = ["eval", str(tiny.checkpoint), str(root), "--workers", "0", "--json", str(tmp_path / "m.json")]
    assert main(args) == 0
    assert "mAP" in capsys.readouterr().out
    assert main([*args, "--junk", "camera"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "one camera" in err[0]
