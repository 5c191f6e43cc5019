"""Fault injection (issue 11): SIGKILL a training run at random points, many times.

One uninterrupted reference run, then the same run (``train.resume=auto``, ``data.workers=0``)
started again and again and killed with SIGKILL either after a random delay or the moment a
checkpoint write is under way (a temporary file appears in ``checkpoints/``). After every kill:
``last.pt``, ``best.pt`` and ``interrupt.pt`` (when present) load with
:func:`hareid.checkpoint.load_checkpoint`, and ``best.pt`` is the best epoch that ``last.pt``
records. A start that finishes the run ends a round (a last start ends the last one); every
finished run must leave no temporary file and equal the reference bit for bit: weights,
optimiser state, every metrics.jsonl record (timings aside), eval.json.

The runs are forked from one helper process that has imported hareid once (a start costs
milliseconds, not the ~2 s of a fresh interpreter), so the default test delivers a dozen kills in
well under a minute on one core; the ``slow`` variant delivers 60 kills on the full-width HA-CNN,
whose 35 MB checkpoints make kills during writes common.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers.tiny import TRAIN_OVERRIDES, Tiny

#: The helper: forks the runs, kills them, checks the run folder after every kill; prints a JSON summary.
KILLER = r'''
import json, os, random, signal, sys, time
import torch

torch.set_num_threads(1)  # before any fork: the runs inherit one intra-op thread and no thread pool
import torchvision.transforms.v2  # noqa: F401 - imported once here, not in every run

import hareid.data, hareid.engine, hareid.evaluate, hareid.models  # noqa: F401, E401
from hareid.checkpoint import load_checkpoint
from hareid.cli import main

cfg = json.loads(sys.argv[1])
data, ref, run = cfg["data"], cfg["ref"], cfg["run"]
rng = random.Random(cfg["seed"])


def argv(out):
    return ["train", "--config", "hacnn_synthetic", f"data.root={data}", f"output_dir={out}",
            *cfg["overrides"], "train.resume=auto"]


def start(out, log):
    pid = os.fork()
    if pid == 0:  # the run: hareid's own command line, in a child process
        code = 3
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            code = main(argv(out))
        finally:
            os._exit(code)
    return pid


def temps(folder):
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs
                  if f.startswith(".") and f.endswith(".tmp"))


def exited(pid):
    done, status = os.waitpid(pid, os.WNOHANG)
    return status if done else None


def fail(msg):
    print(json.dumps({"error": msg}))
    sys.exit(1)


t0 = time.monotonic()
pid = start(ref, os.path.join(os.path.dirname(run), "ref.log"))
_, status = os.waitpid(pid, 0)
full = time.monotonic() - t0
if status != 0:
    fail(f"reference run failed ({status}); see ref.log")

def plain(path):
    recs = [json.loads(x) for x in open(os.path.join(path, "metrics.jsonl")).read().splitlines()]
    return [{k: v for k, v in r.items() if k != "images_per_s"} for r in recs]


def compare(path):
    """A finished run against the reference: which parts are identical, which temp files are left."""
    same = {}
    for name in ("last.pt", "best.pt"):
        a, b = (load_checkpoint(os.path.join(p, "checkpoints", name)) for p in (ref, path))
        same[name] = (a["epoch"] == b["epoch"] and a["iteration"] == b["iteration"]
                      and all(torch.equal(a["state_dict"][n], b["state_dict"][n]) for n in a["state_dict"])
                      and json.dumps(a["metrics"], sort_keys=True) == json.dumps(b["metrics"], sort_keys=True))
        sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
        same[name + " optimizer"] = sa.keys() == sb.keys() and all(
            torch.equal(sa[i][n], sb[i][n]) for i in sa for n in sa[i] if torch.is_tensor(sa[i][n]))
    same["metrics.jsonl"] = plain(ref) == plain(path)
    same["eval.json"] = (json.load(open(os.path.join(ref, "eval.json")))
                         == json.load(open(os.path.join(path, "eval.json"))))
    left = sorted({p for p in left_behind if p.startswith(path + os.sep) and os.path.exists(p)} | set(temps(path)))
    return {"same": same, "temps_left": left}


log = os.path.join(os.path.dirname(run), "run.log")
events, rounds, left_behind = [], [], set()
path = os.path.join(run, "r0")  # one run per round; a round ends when a start finishes the run
for k in range(cfg["kills"]):
    mode = "write" if k % 3 == 0 else "time"  # the first kill lands in the very first checkpoint write
    ckpts = os.path.join(path, "checkpoints")
    stale = set(os.listdir(ckpts)) if os.path.isdir(ckpts) else set()
    pid = start(path, log)
    end = time.monotonic() + (rng.uniform(0.0, cfg["frac"] * full) if mode == "time" else 3 * full)
    status = None
    while status is None and time.monotonic() < end:
        if mode == "write" and os.path.isdir(ckpts) and any(
                f.startswith(".") and f.endswith(".tmp") and f not in stale for f in os.listdir(ckpts)):
            time.sleep(rng.uniform(0.0, 0.004))  # somewhere inside the write
            break
        time.sleep(0.001)
        status = exited(pid)
    if status is None:
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    if not killed and os.waitstatus_to_exitcode(status) != 0:
        fail(f"start {k} failed with exit code {os.waitstatus_to_exitcode(status)}; see run.log")
    state = {}
    for name in ("last.pt", "best.pt", "interrupt.pt"):
        ckpt_path = os.path.join(ckpts, name)
        if os.path.exists(ckpt_path):
            try:
                ck = load_checkpoint(ckpt_path)
            except Exception as e:  # noqa: BLE001 - the point of the test
                fail(f"after kill {k} ({mode}): {name} does not load: {e}")
            state[name] = (int(ck["epoch"]), bool(ck.get("pending_eval")), (ck.get("metrics") or {}).get("best"))
    if "last.pt" in state and state["last.pt"][2]:
        epoch, pending, best = state["last.pt"]
        if "best.pt" not in state:
            fail(f"after kill {k} ({mode}): last.pt records best epoch {best['epoch']} but best.pt is missing")
        allowed = {best["epoch"], epoch} if pending else {best["epoch"]}
        if state["best.pt"][0] not in allowed:
            fail(f"after kill {k} ({mode}): best.pt holds epoch {state['best.pt'][0]}, last.pt says {best}")
    tmp = temps(path)
    left_behind.update(tmp)
    events.append({"round": len(rounds), "mode": mode, "killed": killed, "temps": len(tmp),
                   "last": state.get("last.pt", [None])[0], "pending": state.get("last.pt", [0, False])[1]})
    if not killed:  # the run finished before the kill came: compare it, start another
        rounds.append(compare(path))
        path = os.path.join(run, f"r{len(rounds)}")

pid = start(path, log)
_, status = os.waitpid(pid, 0)
if status != 0:
    fail(f"the final start failed ({status}); see run.log")
rounds.append(compare(path))
print(json.dumps({"reference_s": round(full, 2), "events": events, "rounds": rounds}))
'''


def inject(tiny: Tiny, tmp_path: Path, overrides: list[str], kills: int, frac: float, seed: int) -> dict:
    script = tmp_path / "killer.py"
    script.write_text(textwrap.dedent(KILLER))
    cfg = {"data": str(tiny.data), "ref": str(tmp_path / "ref"), "run": str(tmp_path / "run"),
           "overrides": overrides, "kills": kills, "frac": frac, "seed": seed}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run([sys.executable, str(script), json.dumps(cfg)], capture_output=True, text=True,
                          env=env, timeout=1800)
    logs = "".join(f"\n--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(tmp_path.glob("*.log")))
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0 and lines, f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}{logs}"
    summary = json.loads(lines[-1])
    print(json.dumps(summary, indent=1))  # shown with -s: how many kills landed where
    return summary


def check(summary: dict, min_kills: int) -> None:
    events = summary["events"]
    killed = [e for e in events if e["killed"]]
    assert len(killed) >= min_kills, summary
    assert any(e["temps"] for e in killed), f"no kill landed inside a checkpoint write: {summary}"
    assert any(e["last"] is None for e in killed), f"no kill before the first checkpoint: {summary}"
    for done in summary["rounds"]:  # every run, however often killed, ends as the uninterrupted one
        assert done["temps_left"] == [], summary
        assert done["same"] == dict.fromkeys(done["same"], True), summary


#: Narrow HA-CNN, 6 epochs of 6 batches, evaluated after each: ~4 s for the whole run on one core.
FAST = [*TRAIN_OVERRIDES, "model.channels=[16,32,48]", "model.feature_dim=32", "train.amp=none",
        "train.epochs=6"]


def test_random_sigkills_lose_nothing_and_resume_bit_for_bit(tiny: Tiny, tmp_path: Path) -> None:
    check(inject(tiny, tmp_path, FAST, kills=14, frac=0.5, seed=0), min_kills=6)


@pytest.mark.slow
def test_many_random_sigkills_on_the_full_model(tiny: Tiny, tmp_path: Path) -> None:
    full = [*TRAIN_OVERRIDES, "train.epochs=3"]
    check(inject(tiny, tmp_path, full, kills=60, frac=0.6, seed=1), min_kills=40)
