"""Issue 11, "lose nothing": one regression test per numbered case, each doing what the user did.

Run folders (1), data written only by the commands that write data (2), checkpoints before
evaluation (3), SIGTERM to a process group with loader workers (4), kills between and during
checkpoint writes (5), Ctrl-C (6), what a resume may change (7), bad images (8), one-line errors
(9), ``.safetensors`` models (10), file permissions (11), bounded decoding (12) and unchecked values
(13). The index / search cases live in ``index/test_reliability.py``; random kills in
``engine/test_fault_injection.py``; the harness in ``helpers/reliability.py``.

Commands run in-process through :func:`hareid.cli.main`, or as ``python -m hareid`` where signals,
exit codes, resource limits or a second process matter. Data: the shared tiny synthetic set and a
narrow HA-CNN (channels 16/32/48, 1 MB checkpoints) so that each training run takes a second or two.
"""

from __future__ import annotations

import json
import os
import pickle
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock

from hareid.checkpoint import load_checkpoint
from hareid.cli import main
from tests.helpers.reliability import (
    FAST,
    _png_header_only,
    cli,
    copy_tree,
    env,
    error_line,
    finish,
    group_is_gone,
    hareid_process,
    records,
    snapshot,
    temp_files,
    train,
    truncate,
    wait_for,
)
from tests.helpers.tiny import SYNTHETIC, Tiny, shared_dir


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="session")
def fast(tiny: Tiny, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 1-epoch run of the narrow model on the tiny set (read-only: copy it to change it)."""
    root = shared_dir(tmp_path_factory) / "hareid_reliability"
    root.mkdir(exist_ok=True)
    run = root / "fast_run"
    with FileLock(str(root / "fast.lock")):
        if not (root / "fast.done").is_file():
            shutil.rmtree(run, ignore_errors=True)
            assert main(["train", "--config", "hacnn_synthetic", f"data.root={tiny.data}", f"output_dir={run}",
                         *FAST]) == 0
            (root / "fast.done").write_text("ok\n")
    return run


@pytest.fixture(scope="session")
def long_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic set with ~200 training images: epochs of ~25 batches, long enough to signal into."""
    from hareid.data.synthetic import write_synthetic

    root = shared_dir(tmp_path_factory) / "hareid_reliability"
    root.mkdir(exist_ok=True)
    with FileLock(str(root / "long.lock")):
        return write_synthetic(root / "long_data", **{**SYNTHETIC, "seed": 1, "num_test_ids": 4,
                                                      "images_per_id": 25, "num_distractors": 0, "num_junk": 0})


# ---------------------------------------------------------------- 1. a run folder belongs to one run
def test_01_a_new_run_refuses_a_folder_that_holds_a_run(fast: Path, tiny: Tiny, tmp_path: Path, capsys) -> None:
    """Repro: copy a finished run folder, start `hareid train ... output_dir=COPY data.height=16
    data.width=8`. Before: metrics.jsonl deleted and config.yaml rewritten at once."""
    run = copy_tree(fast, tmp_path / "copy")
    before = snapshot(run)
    for extra in (["train.seed=7"], ["data.height=16", "data.width=8"]):
        rc, _, err = cli(capsys, *train(tiny.data, run, *extra))
        line = error_line(err)
        assert rc == 2
        assert f"{run}: folder already holds a run" in line
        assert "train.resume=auto" in line and "--overwrite" in line
        assert snapshot(run) == before, "a refused run changed the folder"


def test_01_overwrite_keeps_the_old_run_until_the_new_one_saves(fast: Path, tiny: Tiny, tmp_path: Path,
                                                                capsys) -> None:
    """--overwrite: a new run that fails before its first checkpoint gives the old run back whole;
    one that saves replaces it."""
    run = copy_tree(fast, tmp_path / "copy")
    before = snapshot(run)
    truncated = copy_tree(tiny.data, tmp_path / "bad_data")
    for p in sorted((truncated / "bounding_box_train").glob("*.jpg")):
        truncate(p)  # every training image broken: the new run fails at its first batch
    rc, _, err = cli(capsys, *train(truncated, run, "--overwrite"))
    assert rc == 2 and "unreadable image" in error_line(err)
    assert snapshot(run) == before, "the failed overwrite lost the old run"
    assert not (run / ".previous").exists()

    rc, _, err = cli(capsys, *train(tiny.data, run, "--overwrite", "train.seed=7"))
    assert rc == 0, err
    assert load_checkpoint(run / "checkpoints" / "last.pt")["config"]["train"]["seed"] == 7
    assert "seed: 7" in (run / "config.yaml").read_text()
    assert [r["epoch"] for r in records(run) if "loss" in r] == [1]  # the old run's records are gone
    assert not (run / ".previous").exists() and not temp_files(run)


def test_01_overwrite_and_resume_do_not_mix(fast: Path, tiny: Tiny, tmp_path: Path, capsys) -> None:
    """`hareid demo --overwrite` (whose overrides carry train.resume=auto) starts afresh instead of
    resuming; --overwrite with a resume from the folder's own checkpoint is a contradiction."""
    run = copy_tree(fast, tmp_path / "copy")
    own = run / "checkpoints" / "last.pt"
    rc, _, err = cli(capsys, *train(tiny.data, run, "--overwrite", f"train.resume={own}"))
    assert rc == 2 and "cannot resume from that folder's own checkpoint" in error_line(err)
    rc, _, err = cli(capsys, "demo", "--output", run, "--data-root", tiny.data, "--seed", "3", "--overwrite",
                     *FAST, "train.eval_every=-1")
    assert rc == 0, err
    assert "resumed from" not in err
    assert load_checkpoint(own)["config"]["train"]["seed"] == 3
    assert not (run / "eval.json").exists()  # the old run's evaluation went with it


def test_01_an_overwrite_killed_half_way_loses_nothing(tmp_path: Path) -> None:
    """The states a SIGKILL can leave during an overwrite, as the next start finds them: killed while
    moving the old run aside, or before the new run's first checkpoint -> the old run comes back
    whole; killed after that checkpoint but before (or while) deleting the old run -> the new run
    stays and the old one goes."""
    from hareid.engine.state import RunFolder

    old = {"config.yaml": "old", "metrics.jsonl": "{}\n", "eval.json": "{}", "checkpoints/last.pt": "weights",
           "checkpoints/best.pt": "best"}

    def write(root: Path, files: dict[str, str]) -> None:
        for name, text in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(text)

    def moved_aside(root: Path, names: list[str], moved: list[str]) -> Path:
        """``root`` with the old run, its ``names`` listed in .previous/moved.json and ``moved`` moved."""
        write(root, old)
        (root / ".previous").mkdir()
        (root / ".previous" / "moved.json").write_text(json.dumps(names))
        for n in moved:
            (root / n).rename(root / ".previous" / n)
        return root

    def start(root: Path) -> dict[str, str]:
        with RunFolder(root):
            pass
        assert not (root / ".previous").exists() and not (root / ".previous.discard").exists()
        return {k: v for k, v in ((str(p.relative_to(root)), p.read_text()) for p in root.rglob("*")
                                  if p.is_file() and p.name != ".lock")}

    top = ["checkpoints", "config.yaml", "eval.json", "metrics.jsonl"]
    # killed while moving aside: two entries moved, two not yet
    assert start(moved_aside(tmp_path / "a", top, ["checkpoints", "config.yaml"])) == old
    # killed before the new run's first checkpoint (a half-written one only)
    b = moved_aside(tmp_path / "b", top, top)
    write(b, {"config.yaml": "new", "checkpoints/.last.pt.ab12cd34.tmp": "half"})
    assert start(b) == old
    # killed after the new run's first checkpoint, before the old run was deleted
    c = moved_aside(tmp_path / "c", top, top)
    write(c, {"config.yaml": "new", "checkpoints/last.pt": "new weights"})
    assert start(c) == {"config.yaml": "new", "checkpoints/last.pt": "new weights"}
    # killed while deleting it (renamed first, so never mistaken for a whole old run)
    d = moved_aside(tmp_path / "d", top, top)
    write(d, {"config.yaml": "new", "checkpoints/last.pt": "new weights"})
    (d / ".previous").rename(d / ".previous.discard")
    (d / ".previous.discard" / "eval.json").unlink()
    assert start(d) == {"config.yaml": "new", "checkpoints/last.pt": "new weights"}


def test_01_06_a_second_writer_is_refused_and_ctrl_c_exits_130(long_data: Path, tmp_path: Path,
                                                                capsys) -> None:
    """Case 1 (two runs writing one folder at once both exited 0) and case 6 (a graceful Ctrl-C
    exited 0 and printed "next: hareid report"): while a run trains, a second `hareid train` into its
    folder is refused with one line; Ctrl-C (SIGINT to the foreground process group) then stops the
    first run with a checkpoint, a resume hint and exit code 130."""
    run = tmp_path / "run"
    proc = hareid_process(train(long_data, run, "train.epochs=20", "train.eval_every=0"))
    try:
        wait_for(run / "checkpoints" / "last.pt", proc)  # epoch 1 done: the run is under way
        rc, _, err = cli(capsys, *train(long_data, run, "train.epochs=20", "train.eval_every=0", "train.seed=5"))
        line = error_line(err)
        assert rc == 2 and f"another hareid run (pid {proc.pid}) is writing this folder" in line
        assert proc.poll() is None, "the second run stopped the first"
        time.sleep(0.3)
        os.killpg(proc.pid, signal.SIGINT)
    finally:
        rc, out, err = finish(proc)
    assert rc == 130, err
    assert "Traceback" not in err and "SIGINT: saved" in err and "train.resume=auto" in err
    assert "next: hareid report" not in out
    assert "seed: 0" in (run / "config.yaml").read_text()  # the first run's config, not the second's
    ckpt = load_checkpoint(run / "checkpoints" / "interrupt.pt")
    assert ckpt["epoch"] >= 1 and ckpt["batch_in_epoch"] > 0 and ckpt["config"]["train"]["seed"] == 0


def test_01_a_run_that_died_before_its_first_checkpoint_can_be_started_again(tiny: Tiny, tmp_path: Path,
                                                                            capsys) -> None:
    """A run that failed or was killed before its first checkpoint leaves config.yaml (maybe
    metrics.jsonl, a temp file): running the command again (or with train.resume=auto) starts it
    afresh instead of refusing the folder or appending to the dead run's records."""
    for extra in ([], ["train.resume=auto"]):
        run = tmp_path / f"run{len(extra)}"
        (run / "checkpoints").mkdir(parents=True)
        (run / "config.yaml").write_text("left: by a killed run\n")
        (run / "metrics.jsonl").write_text('{"epoch": 1, "loss": 9.0}\n{"epoch": 1, "lo')  # cut short by the kill
        (run / "checkpoints" / ".last.pt.ab12cd34.tmp").write_bytes(b"\0" * 100)
        rc, _, err = cli(capsys, *train(tiny.data, run, *extra))
        assert rc == 0, err
        assert [r["loss"] != 9.0 for r in records(run) if "loss" in r] == [True]
        assert not temp_files(run) and not (run / ".previous").exists()
    # a folder holding anything else is still refused
    other = tmp_path / "other"
    other.mkdir()
    (other / "thesis.tex").write_text("keep me")
    rc, _, err = cli(capsys, *train(tiny.data, other, "train.resume=auto"))
    assert rc == 2 and "not a hareid run (thesis.tex)" in error_line(err)
    assert sorted(p.name for p in other.iterdir() if p.name != ".lock") == ["thesis.tex"]


# --------------------------------------------------------------- 2. data is written only on purpose
def test_02_training_never_generates_synthetic_data(tmp_path: Path, capsys) -> None:
    """Repro: `data.name=synthetic data.root=/wrong/path` wrote 4011 images there and trained."""
    wrong, run = tmp_path / "wrong" / "path", tmp_path / "run"
    rc, _, err = cli(capsys, *train(wrong, run, "data.name=synthetic"))
    line = error_line(err)
    assert rc == 2 and f"{wrong}: no complete synthetic set here" in line and "hareid synthetic" in line
    assert not wrong.exists() and not (tmp_path / "wrong").exists()
    assert not run.exists()


def test_02_visualize_and_report_do_not_regenerate_moved_data(fast: Path, tmp_path: Path, capsys) -> None:
    """Repro: a synthetic run whose data has moved; `hareid visualize RUN/...` and `hareid report RUN`
    regenerated a default set there and reported on it."""
    from hareid.checkpoint import save_checkpoint

    run = copy_tree(fast, tmp_path / "run")
    moved = tmp_path / "was_here"  # the data.root the run was trained on, now gone
    for name in ("best.pt", "last.pt"):
        ckpt = load_checkpoint(run / "checkpoints" / name)
        ckpt["config"]["data"]["root"] = str(moved)
        save_checkpoint(ckpt, run / "checkpoints" / name)
    (run / "config.yaml").write_text(_set_root((run / "config.yaml").read_text(), moved))
    rc, _, err = cli(capsys, "visualize", run / "checkpoints" / "best.pt", "--out", tmp_path / "a.png")
    line = error_line(err)
    assert rc == 2 and f"{moved}: no complete synthetic set here" in line
    assert not moved.exists() and not (tmp_path / "a.png").exists()

    rc, _, err = cli(capsys, "report", run, "--num-images", "2")
    assert rc == 0, err
    assert not moved.exists()
    page = (run / "report" / "index.html").read_text()
    missing = page[page.index('id="missing"'):]
    assert f"{moved}: no complete synthetic set here" in missing  # said, not papered over


def _set_root(cfg_text: str, root: Path) -> str:
    import yaml

    cfg = yaml.safe_load(cfg_text)
    cfg["data"]["root"] = str(root)
    return yaml.safe_dump(cfg, sort_keys=False)


# ---------------------------------------------------- 3. an evaluation error keeps the trained epoch
def _single_camera_folder(tiny: Tiny, root: Path) -> Path:
    """The tiny set as ROOT/{train,query,gallery}/<pid>/c1_<name>.jpg: every image from one camera."""
    for split, folder in (("train", "bounding_box_train"), ("query", "query"), ("gallery", "bounding_box_test")):
        for p in sorted((tiny.data / folder).glob("*.jpg")):
            pid = p.name.split("_")[0]
            if pid in ("0000", "-1"):
                continue
            dst = root / split / pid / f"c1_{p.name}"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, dst)
    return root


def test_03_single_camera_data_is_refused_before_training(tiny: Tiny, tmp_path: Path, capsys) -> None:
    """Repro: single-camera data, 1 epoch: evaluation failed after training and checkpoints/ stayed
    empty. Now: refused before training, and the fix the message names works."""
    data, run = _single_camera_folder(tiny, tmp_path / "one_cam"), tmp_path / "run"
    rc, _, err = cli(capsys, *train(data, run, "data.name=folder"))
    line = error_line(err)
    assert rc == 2 and "no query of folder" in line and "train.eval_every=-1" in line
    assert not run.exists()
    rc, _, err = cli(capsys, *train(data, run, "data.name=folder", "train.eval_every=-1"))
    assert rc == 0, err
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1
    assert not (run / "eval.json").exists() and not any("mAP" in r for r in records(run))


def test_03_an_evaluation_error_keeps_the_trained_epoch(tiny: Tiny, tmp_path: Path, capsys) -> None:
    """Repro: a truncated query JPEG (that --verify-images passed) failed the evaluation after
    epoch 1, and the epoch was lost. Now last.pt holds it; a resume only redoes the evaluation."""
    data, run = copy_tree(tiny.data, tmp_path / "data"), tmp_path / "run"
    bad = truncate(sorted((data / "query").glob("*.jpg"))[3])
    rc, _, err = cli(capsys, *train(data, run))
    line = error_line(err)
    assert rc == 2 and f"{bad}: unreadable image" in line and "--skip-bad-images" in line
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert last["epoch"] == 1 and last["pending_eval"] is True
    assert not (run / "checkpoints" / "best.pt").exists()

    with pytest.warns(RuntimeWarning, match=f"skipping bad image: {bad}"):
        rc, _, err = cli(capsys, *train(data, run, "train.resume=auto", "--skip-bad-images"))
    assert rc == 0, err
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["epoch"] == 1 and best["iteration"] == last["iteration"]  # not trained again
    assert [r["epoch"] for r in records(run) if "loss" in r] == [1]
    assert [r["epoch"] for r in records(run) if "mAP" in r] == [1]


# ------------------------------------------------------- 4. SIGTERM to a process group with workers
def test_04_sigterm_to_the_process_group_with_workers_saves_interrupt_pt(long_data: Path,
                                                                         tmp_path: Path) -> None:
    """Repro: `timeout`/Slurm send SIGTERM to the whole group; with data.workers > 0 the run died
    with "DataLoader worker ... Terminated" and wrote no interrupt.pt."""
    run = tmp_path / "run"
    proc = hareid_process(train(long_data, run, "data.workers=2", "train.epochs=20", "train.eval_every=0"))
    try:
        wait_for(run / "checkpoints" / "last.pt", proc)
        time.sleep(0.3)  # into epoch 2
        os.killpg(proc.pid, signal.SIGTERM)
    finally:
        rc, _, err = finish(proc)
    assert rc == 130, err
    assert "Traceback" not in err and "DataLoader worker" not in err
    assert "SIGTERM: saved" in err and "interrupt.pt" in err
    ckpt = load_checkpoint(run / "checkpoints" / "interrupt.pt")
    assert ckpt["epoch"] >= 1 and 0 < ckpt["batch_in_epoch"] < 30
    assert group_is_gone(proc.pid), "worker processes outlived the run"


# ------------------------------------------------------- 5. kills between and during checkpoint writes
KILL_AFTER_SAVE = """
import importlib, os, signal, sys
import hareid.checkpoint
real = hareid.checkpoint.save_checkpoint

def save_then_die(state, path, *a, **kw):
    out = real(state, path, *a, **kw)
    if os.path.basename(str(path)) == "last.pt":  # killed between the last.pt and best.pt writes
        os.kill(os.getpid(), signal.SIGKILL)
    return out

for name in ("hareid.engine.trainer", "hareid.engine"):  # the trainer's module (engine.py before 0.2)
    try:
        mod = importlib.import_module(name)
    except ImportError:
        continue
    if hasattr(mod, "save_checkpoint"):
        mod.save_checkpoint = save_then_die
from hareid.cli import main
sys.exit(main(sys.argv[1:]))
"""

KILL_DURING_SAVE = """
import os, signal, sys, torch
real, count = torch.save, [0]

def save_then_die(obj, f, *a, **kw):
    real(obj, f, *a, **kw)
    if isinstance(obj, dict) and "optimizer" in obj:
        count[0] += 1
        if count[0] == int(os.environ["KILL_AT_SAVE"]):  # the bytes are written, the rename is not
            if hasattr(f, "flush"):
                f.flush()
            os.kill(os.getpid(), signal.SIGKILL)

torch.save = save_then_die
from hareid.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _run_script(tmp_path: Path, script: str, argv: list[str], **extra_env: str) -> subprocess.CompletedProcess:
    path = tmp_path / "wrapper.py"
    path.write_text(textwrap.dedent(script))
    return subprocess.run([sys.executable, str(path), *argv], capture_output=True, text=True,
                          env={**env(), **extra_env}, timeout=300)


def test_05_a_kill_between_last_and_best_cannot_lose_best_pt(tiny: Tiny, tmp_path: Path, capsys) -> None:
    """Repro: SIGKILL between the last.pt and best.pt writes left best.pt missing for good, even
    after resuming to the end."""
    run = tmp_path / "run"
    done = _run_script(tmp_path, KILL_AFTER_SAVE, train(tiny.data, run))
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1
    assert not (run / "checkpoints" / "best.pt").exists()
    rc, _, err = cli(capsys, *train(tiny.data, run, "train.resume=auto"))
    assert rc == 0, err
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["epoch"] == 1 and best["metrics"]["best"]["epoch"] == 1
    assert [r["epoch"] for r in records(run) if "mAP" in r] == [1]  # evaluated once, recorded once
    assert json.loads((run / "eval.json").read_text())["epoch"] == 1


def test_05_a_kill_during_a_checkpoint_write_leaves_no_temp_file_after_the_next_start(
        tiny: Tiny, tmp_path: Path, capsys) -> None:
    """Repro: hidden .tmp files of up to 29 MB stayed behind after kills during saves."""
    run = tmp_path / "run"
    done = _run_script(tmp_path, KILL_DURING_SAVE, train(tiny.data, run), KILL_AT_SAVE="2")
    assert done.returncode == -signal.SIGKILL, done.stderr
    ckpts = run / "checkpoints"
    left = temp_files(run)
    assert left and all(p.parent == ckpts for p in left)  # the second write (best.pt) was cut short
    assert load_checkpoint(ckpts / "last.pt")["epoch"] == 1  # the first one is whole
    rc, _, err = cli(capsys, *train(tiny.data, run, "train.resume=auto"))
    assert rc == 0, err
    assert not temp_files(run)
    assert sorted(p.name for p in ckpts.iterdir()) == ["best.pt", "last.pt"]
    assert load_checkpoint(ckpts / "best.pt")["epoch"] == 1


def test_05_auto_resume_takes_the_newer_of_interrupt_and_last(fast: Path, tiny: Tiny, tmp_path: Path,
                                                             capsys) -> None:
    """A kill between writing last.pt and removing interrupt.pt leaves an older interrupt.pt
    beside a newer last.pt: `train.resume=auto` resumes from last.pt, not back in time."""
    from hareid.checkpoint import save_checkpoint

    run = copy_tree(fast, tmp_path / "run")
    stale = load_checkpoint(run / "checkpoints" / "last.pt")
    stale.update(epoch=0, batch_in_epoch=2)  # as if saved mid-epoch 1, before last.pt
    save_checkpoint(stale, run / "checkpoints" / "interrupt.pt")
    rc, _, err = cli(capsys, *train(tiny.data, run, "train.resume=auto"))
    assert rc == 0, err
    assert "resumed from" in err and "last.pt (epoch 1" in err


# ------------------------------------------------------------------------------- 7. what a resume may change
def test_07_resume_refuses_changed_settings_and_a_longer_cosine_schedule(fast: Path, tiny: Tiny,
                                                                          tmp_path: Path, capsys) -> None:
    """Repro: resume ignored optim.* overrides silently yet wrote them into config.yaml; raising
    train.epochs on resume made the cosine learning rate climb again."""
    run = copy_tree(fast, tmp_path / "run")
    before = snapshot(run)
    rc, _, err = cli(capsys, *train(tiny.data, run, "train.resume=auto", "optim.lr=0.1"))
    line = error_line(err)
    assert rc == 2 and "optim.lr=0.1 (run: 0.001) changed" in line and "model.init=" in line
    rc, _, err = cli(capsys, *train(tiny.data, run, "train.resume=auto", "train.epochs=2"))
    line = error_line(err)
    assert rc == 2 and "train.epochs=2" in line and "cosine" in line
    assert snapshot(run) == before  # config.yaml and checkpoints untouched

    # a schedule that does not depend on the length may be extended; the lr does not climb back
    step = tmp_path / "step"
    assert cli(capsys, *train(tiny.data, step, "optim.scheduler=step", "optim.step_size=1"))[0] == 0
    rc, _, err = cli(capsys, *train(tiny.data, step, "optim.scheduler=step", "optim.step_size=1",
                                    "train.resume=auto", "train.epochs=2"))
    assert rc == 0, err
    lrs = [r["lr"] for r in records(step) if "loss" in r]
    assert len(lrs) == 2 and lrs[1] == pytest.approx(lrs[0] * 0.1)
    assert "epochs: 2" in (step / "config.yaml").read_text()


# ------------------------------------------------------------------------------------ 8. bad images
def test_08_bad_image_errors_name_a_flag_that_exists(fast: Path, tiny: Tiny, tmp_path: Path, capsys) -> None:
    """Repro: the error suggested a --skip-bad-images flag that no command had (train, eval here;
    index and search in index/test_reliability.py)."""
    data = copy_tree(tiny.data, tmp_path / "data")
    first = sorted((data / "bounding_box_train").glob("*.jpg"))[0].name.split("_")[0]
    bad_train = {str(truncate(p)) for p in (data / "bounding_box_train").glob(f"{first}_*.jpg")}  # one identity
    bad_gallery = truncate(sorted((data / "bounding_box_test").glob("*.jpg"))[2])
    rc, _, err = cli(capsys, *train(data, tmp_path / "run"))
    line = error_line(err)
    assert rc == 2 and line.split("hareid: error: ")[1].split(": unreadable image")[0] in bad_train
    assert "--skip-bad-images" in line
    with pytest.warns(RuntimeWarning, match="skipping bad image") as caught:
        rc, _, err = cli(capsys, *train(data, tmp_path / "run", "--skip-bad-images"))
    assert rc == 0, err
    assert any(b in str(w.message) for w in caught for b in bad_train)

    ckpt = fast / "checkpoints" / "best.pt"
    rc, _, err = cli(capsys, "eval", ckpt, data, "--workers", "0", "--json", tmp_path / "m.json")
    line = error_line(err)
    assert rc == 2 and f"{bad_gallery}: unreadable image" in line and "--skip-bad-images" in line
    n_gallery = len(list((data / "bounding_box_test").glob("*.jpg"))) - len(list(
        (data / "bounding_box_test").glob("-1_*.jpg")))
    with pytest.warns(RuntimeWarning, match=f"skipping bad image: {bad_gallery}"):
        rc, out, err = cli(capsys, "eval", ckpt, data, "--workers", "0", "--skip-bad-images", "--json",
                           tmp_path / "m.json")
    assert rc == 0, err
    assert f"gallery={n_gallery - 1}" in out


def test_08_verify_images_catches_a_truncated_jpeg(tiny: Tiny, tmp_path: Path, capsys) -> None:
    """Repro: `hareid datasets ROOT --verify-images` passed a truncated JPEG."""
    data = copy_tree(tiny.data, tmp_path / "data")
    bad = truncate(sorted((data / "query").glob("*.jpg"))[0], keep=0.8)
    rc, _, err = cli(capsys, "datasets", data, "--verify-images")
    line = error_line(err)
    assert rc == 2 and f"{bad}: unreadable image" in line and "truncated" in line


def _valid_queries(data: Path, exclude: Path) -> int:
    """Queries with a gallery image of their identity from another camera (Market-1501 rule)."""
    def pc(p: Path) -> tuple[str, str]:
        pid, cam = p.name.split("_")[:2]
        return pid, cam

    gallery = [pc(p) for p in (data / "bounding_box_test").glob("*.jpg")]
    return sum(any(g[0] == q[0] and g[1] != q[1] for g in gallery)
               for q in (pc(p) for p in (data / "query").glob("*.jpg") if p != exclude))


def test_08_a_bad_query_image_is_dropped_not_replaced(fast: Path, tiny: Tiny, tmp_path: Path, capsys) -> None:
    """Repro: with data.skip_bad_images=true a bad query image was replaced by a duplicate of another
    query (its identity counted twice) instead of being dropped."""
    data = copy_tree(tiny.data, tmp_path / "data")
    queries = sorted(p for p in (data / "query").glob("*.jpg") if not p.name.startswith("-1_"))
    bad = truncate(queries[0])
    run = tmp_path / "run"
    with pytest.warns(RuntimeWarning, match=f"skipping bad image: {bad}"):
        rc, _, err = cli(capsys, *train(data, run, "data.skip_bad_images=true"))
    assert rc == 0, err
    assert json.loads((run / "eval.json").read_text())["num_valid"] == _valid_queries(data, exclude=bad)
    # `hareid eval --skip-bad-images` drops it the same way
    with pytest.warns(RuntimeWarning, match=f"skipping bad image: {bad}"):
        rc, out, err = cli(capsys, "eval", fast / "checkpoints" / "best.pt", data, "--workers", "0",
                           "--skip-bad-images", "--json", tmp_path / "m.json")
    assert rc == 0, err
    assert f"query={len(queries) - 1} " in out
    assert json.loads((tmp_path / "m.json").read_text())["num_valid"] == _valid_queries(data, exclude=bad)


# ---------------------------------------------------------------- 9. one line, not a library's error
def test_09_resume_on_data_with_another_number_of_identities(fast: Path, tiny: Tiny, tmp_path: Path,
                                                             capsys) -> None:
    """Repro: a checkpoint with another number of classes gave "Error(s) in loading state_dict for HACNN:"."""
    run = copy_tree(fast, tmp_path / "run")
    fewer = copy_tree(tiny.data, tmp_path / "fewer")
    pids = sorted({p.name.split("_")[0] for p in (fewer / "bounding_box_train").glob("*.jpg")})
    for p in (fewer / "bounding_box_train").glob(f"{pids[0]}_*.jpg"):
        p.unlink()  # 7 training identities instead of 8
    rc, _, err = cli(capsys, *train(fewer, run, "train.resume=auto"))
    line = error_line(err)
    last = run / "checkpoints" / "last.pt"
    assert rc == 2 and f"{last}: the run was trained on 8 identities" in line and "has 7" in line
    assert f"model.init={last}" in line and "state_dict" not in line
    # the fix the line names: a new run started from those weights
    rc, _, err = cli(capsys, *train(fewer, tmp_path / "new", f"model.init={last}"))
    assert rc == 0, err
    assert json.loads((tmp_path / "new" / "init.json").read_text())["skipped"]  # the 8-way classifiers
    # a checkpoint whose settings name 10 identities but whose weights have 8, in any command
    from hareid.checkpoint import save_checkpoint

    ckpt = load_checkpoint(last)
    ckpt["model"]["num_classes"] = 10
    odd = save_checkpoint(ckpt, tmp_path / "odd.pt")
    rc, _, err = cli(capsys, "export", odd, "--format", "torchscript", "--out", tmp_path / "odd.ts")
    line = error_line(err)
    assert rc == 2 and f"{odd}: weights do not fit model 'hacnn'" in line and "shape mismatch" in line
    assert "model.init=" in line and "Error(s) in loading" not in line


def test_09_a_broken_safetensors_file_is_one_line(fast: Path, tiny: Tiny, tmp_path: Path, capsys) -> None:
    """Repro: a broken .safetensors gave SafetensorError."""
    from safetensors.torch import save_file

    path = tmp_path / "m.safetensors"
    sd = load_checkpoint(fast / "checkpoints" / "best.pt")["state_dict"]
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    truncate(path, keep=0.6)
    for argv in (["eval", path, tiny.data, "--workers", "0"], ["export", path, "--format", "torchscript"]):
        rc, _, err = cli(capsys, *argv)
        line = error_line(err)
        assert rc == 2 and f"{path}: not a readable .safetensors file" in line


def _limit_file_size(limit: int) -> Callable[[], None]:
    def apply() -> None:  # in the child: writes beyond `limit` bytes fail (EFBIG), as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    return apply


FULL_DISK = """
import sys
from hareid.cli import main
for argv in sys.argv[1:]:  # each a command line, as JSON
    print("EXIT", main(__import__("json").loads(argv)), flush=True)
    print("---", file=sys.stderr, flush=True)
"""


def test_09_a_full_disk_is_one_line_and_keeps_what_was_there(fast: Path, tiny: Tiny, tmp_path: Path) -> None:
    """Repro: a full disk gave "enforce fail at inline_container.cc:672" (and a half-written temp file).
    Here a file-size limit makes every write beyond 200 kB fail as a full disk would."""
    new, old = tmp_path / "new", copy_tree(fast, tmp_path / "old")
    before = snapshot(old)
    runs = [train(tiny.data, new), train(tiny.data, old, "--overwrite")]  # a new run; an overwrite
    done = subprocess.run([sys.executable, "-c", FULL_DISK, *(json.dumps([str(a) for a in r]) for r in runs)],
                          capture_output=True, text=True, env=env(), preexec_fn=_limit_file_size(200_000),
                          timeout=300)
    assert [ln for ln in done.stdout.splitlines() if ln.startswith("EXIT")] == ["EXIT 2", "EXIT 2"], done.stderr
    first, second = (error_line(err) for err in done.stderr.split("---\n")[:2])
    assert f"{new / 'checkpoints' / 'last.pt'}: could not write the checkpoint (the write stopped short: disk full" in first
    assert "inline_container" not in first
    assert not temp_files(new) and not (new / "checkpoints" / "last.pt").exists()
    assert f"{old / 'checkpoints' / 'last.pt'}: could not write the checkpoint" in second
    assert snapshot(old) == before and not (old / ".previous").exists()  # the old run stays whole


@pytest.mark.parametrize(("argv", "expected"), [
    (["eval", "{ckpt}", "{data}", "--batch-size", "0"], "argument --batch-size: must be >= 1, got 0"),
    (["eval", "{ckpt}", "{data}", "--workers", "-1"], "argument --workers: must be >= 0, got -1"),
    (["train", "--config", "hacnn_synthetic", "data.batch_size=0", "output_dir={tmp}/run"],
     "data.batch_size: must be > 0, got 0"),
    (["train", "--config", "hacnn_synthetic", "data.workers=-1", "output_dir={tmp}/run"],
     "data.workers: must be >= 0, got -1"),
])
def test_09_batch_size_zero_and_negative_workers(argv: list[str], expected: str, fast: Path, tiny: Tiny,
                                                 tmp_path: Path, capsys) -> None:
    """Repro: `--batch-size 0` and `--workers -1` ended in raw library errors."""
    fill = {"ckpt": fast / "checkpoints" / "best.pt", "data": tiny.data, "tmp": tmp_path}
    rc, _, err = cli(capsys, *[a.format(**fill) for a in argv])
    assert rc == 2 and expected in error_line(err)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------ 10. .safetensors models
def test_10_a_safetensors_model_loads_in_every_command(fast: Path, tiny: Tiny, tmp_path: Path, capsys) -> None:
    """Repro: a hareid model saved as .safetensors could not be loaded by load_model or any command."""
    import torch

    from hareid.api import embed, load_model
    from hareid.checkpoint import save_checkpoint

    best = fast / "checkpoints" / "best.pt"
    st = save_checkpoint(load_checkpoint(best), tmp_path / "model.safetensors")
    images = [str(p) for p in tiny.images("query")[:4]]
    (m1, i1), (m2, i2) = load_model(best), load_model(st)
    assert torch.equal(embed(m1, images, i1), embed(m2, images, i2))
    for argv in (["eval", st, tiny.data, "--workers", "0", "--json", tmp_path / "st.json"],
                 ["eval", best, tiny.data, "--workers", "0", "--json", tmp_path / "pt.json"],
                 ["export", st, "--format", "torchscript", "--out", tmp_path / "m.ts"]):
        rc, _, err = cli(capsys, *argv)
        assert rc == 0, err
    metrics = [json.loads((tmp_path / f"{x}.json").read_text()) for x in ("st", "pt")]
    assert metrics[0]["mAP"] == metrics[1]["mAP"] and metrics[0]["cmc"] == metrics[1]["cmc"]


# ------------------------------------------------------------------------------ 11. file permissions
def test_11_files_get_the_umask_permissions(tiny: Tiny, tmp_path: Path, capsys) -> None:
    """Repro: checkpoints and exports were written with mode 0600 whatever the umask."""
    old = os.umask(0o027)
    try:
        run = tmp_path / "run"
        assert cli(capsys, *train(tiny.data, run))[0] == 0
        best = run / "checkpoints" / "best.pt"
        rc, _, err = cli(capsys, "export", best, "--format", "torchscript", "--out", tmp_path / "m.ts")
        assert rc == 0, err
        rc, _, err = cli(capsys, "eval", best, tiny.data, "--workers", "0", "--json", tmp_path / "m.json")
        assert rc == 0, err
        files = [p for p in [*run.rglob("*"), *tmp_path.glob("m.*")] if p.is_file()]
        assert {p.relative_to(tmp_path).as_posix() for p in files} >= {
            "run/config.yaml", "run/metrics.jsonl", "run/eval.json", "run/checkpoints/last.pt",
            "run/checkpoints/best.pt", "m.ts", "m.json"}
        modes = {p.relative_to(tmp_path).as_posix(): oct(p.stat().st_mode & 0o777) for p in files}
        assert set(modes.values()) == {oct(0o640)}, modes
    finally:
        os.umask(old)


# ------------------------------------------------------------------------------ 12. bounded decoding
def test_12_decoding_is_bounded_by_the_image_header(fast: Path, tiny: Tiny, tmp_path: Path, capsys,
                                                    monkeypatch) -> None:
    """Repro: a small PNG declaring 16000x16000 pixels was decoded (+0.6 GB). Now refused from its
    header, before any pixel is decoded, with one line (visualize, eval; search in the index tests)."""
    import torchvision.io
    from PIL import ImageFile

    bomb = _png_header_only(tmp_path / "bomb.png", 16000, 16000)  # beyond PIL's own limit too
    big = _png_header_only(tmp_path / "big.png", 12000, 9000)  # 108 Mpx: above hareid's 96 Mpx only
    assert bomb.stat().st_size < 100_000
    decoded: list[object] = []

    def spy(real: Callable) -> Callable:
        def wrapper(*a: object, **kw: object) -> object:
            decoded.append(a[:1])
            return real(*a, **kw)
        return wrapper

    monkeypatch.setattr(torchvision.io, "decode_image", spy(torchvision.io.decode_image))
    monkeypatch.setattr(ImageFile.ImageFile, "load", spy(ImageFile.ImageFile.load))
    ckpt = fast / "checkpoints" / "best.pt"
    for image, size in ((bomb, "more than"), (big, "12000x9000")):
        rc, _, err = cli(capsys, "visualize", ckpt, image, "--out", tmp_path / "a.png")
        line = error_line(err)
        assert rc == 2 and f"{image}: declares {size}" in line and "pixels, more than hareid decodes" in line
    assert decoded == []
    # inside a dataset: the same refusal names the file; --skip-bad-images drops it
    data = copy_tree(tiny.data, tmp_path / "data")
    shutil.copyfile(bomb, data / "bounding_box_test" / "0001_c1s1_999999_00.jpg")  # content sniffed, not suffix
    rc, _, err = cli(capsys, "eval", ckpt, data, "--workers", "0", "--json", tmp_path / "m.json")
    assert rc == 2 and "0001_c1s1_999999_00.jpg: declares more than" in error_line(err)
    monkeypatch.undo()
    with pytest.warns(RuntimeWarning, match="0001_c1s1_999999_00.jpg: declares more than"):
        rc, _, err = cli(capsys, "eval", ckpt, data, "--workers", "0", "--skip-bad-images", "--json",
                         tmp_path / "m.json")
    assert rc == 0, err


# -------------------------------------------------------------------------------- 13. unchecked values
@pytest.mark.parametrize(("argv", "expected"), [
    (["train", "--config", "hacnn_synthetic", "optim.lr=0", "output_dir={tmp}/run"], "optim.lr: must be > 0"),
    (["train", "--config", "hacnn_synthetic", "optim.gamma=1e12", "output_dir={tmp}/run"],
     "optim.gamma: the decay factor must be in (0, 1]"),
    (["search", "{ckpt}", "{tmp}", "{img}", "-k", "0"], "argument -k: must be >= 1, got 0"),
    (["search", "{ckpt}", "{tmp}", "{img}", "-k", "-5"], "argument -k: must be >= 1, got -5"),
    (["export", "{ckpt}", "--height", "0"], "argument --height: must be >= 1, got 0"),
], ids=["lr-0", "gamma-1e12", "k-0", "k-minus-5", "export-height-0"])
def test_13_unchecked_values_are_refused(argv: list[str], expected: str, fast: Path, tiny: Tiny,
                                         tmp_path: Path, capsys) -> None:
    fill = {"ckpt": fast / "checkpoints" / "best.pt", "tmp": tmp_path, "img": tiny.images()[0]}
    rc, _, err = cli(capsys, *[a.format(**fill) for a in argv])
    assert rc == 2 and expected in error_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written (no run, no export)


def test_13_a_csv_manifest_with_a_byte_order_mark(tiny: Tiny, tmp_path: Path, capsys) -> None:
    """Repro: a CSV with a UTF-8 byte-order mark (as Excel writes it) was rejected."""
    rows = ["path,pid,camid,split"]
    for split, folder in (("train", "bounding_box_train"), ("query", "query"), ("gallery", "bounding_box_test")):
        for p in sorted((tiny.data / folder).glob("*.jpg")):
            pid, cam = p.name.split("_")[:2]
            rows.append(f"{p},{int(pid)},{cam},{split}")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n", encoding="utf-8-sig")
    assert manifest.read_bytes().startswith(b"\xef\xbb\xbf")
    rc, out, err = cli(capsys, "datasets", manifest)
    assert rc == 0, err
    assert "layout: csv" in out


def test_13_an_empty_json_config_is_refused_and_writes_nothing(tmp_path: Path, capsys, monkeypatch) -> None:
    """Repro: a .json config `{}` started the default 60-epoch run and wrote ./data/synthetic."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    rc, _, err = cli(capsys, "train", "--config", "config.json")
    assert rc == 2 and "config.json: the config is empty" in error_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


class _Payload:
    """Pickles as a call to os.system: what a malicious checkpoint carries."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


def test_13_an_os_system_pickle_names_the_global_and_runs_nothing(tiny: Tiny, tmp_path: Path, capsys) -> None:
    """Repro: the specific unsafe-pickle message never showed for os/posix payloads."""
    import torch

    marker = tmp_path / "pwned"
    zipped = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "x": _Payload(marker)}, zipped)  # torch's zip format
    raw = tmp_path / "evil_raw.pt"
    raw.write_bytes(pickle.dumps({"x": _Payload(marker)}, protocol=2))  # a bare pickle
    for path in (zipped, raw):
        rc, _, err = cli(capsys, "eval", path, tiny.data, "--workers", "0")
        line = error_line(err)
        assert rc == 2 and f"{path}: cannot be loaded safely" in line
        assert f"pickles {os.system.__module__}.system" in line and "could run code" in line
    assert not marker.exists()


def test_04b_a_script_holding_live_loader_workers_exits(tiny: Tiny, tmp_path: Path) -> None:
    """Workers ignore SIGTERM (case 4), so multiprocessing's exit handler (terminate, then join)
    would wait forever on workers a script still references at exit (a live iterator, or a
    Trainer's persistent workers in its globals): the exit hook ends them first."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(f"""
        from hareid.data import build_dataset
        from hareid.data.loader import build_eval_loaders

        ds = build_dataset("synthetic", {str(tiny.data)!r}, verbose=False)
        query, gallery = build_eval_loaders(ds, 32, 16, batch_size=2, workers=2)
        it = iter(query)
        next(it)  # two workers alive, the iterator referenced until the interpreter exits
        print("end of script", flush=True)
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env(), timeout=120)
    assert proc.returncode == 0 and "end of script" in proc.stdout, proc.stderr
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr
