"""Trainer: run folder, exact resume (epoch boundary and mid-epoch), NaN stop, best checkpoint,
SIGTERM, AMP/clip paths, schedules. Uses a tiny injected model and in-memory data (no hareid.data)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from hareid.checkpoint import load_checkpoint
from hareid.config import Config, OptimConfig, load_config
from hareid.engine import Trainer, resolve_amp
from hareid.engine.optim import build_optimizer, build_scheduler, current_lr
from hareid.errors import ConfigError, HareidError
from tests.helpers.toys import EpochSampler, TinyNet, TinyReID, tiny_cfg

ROOT = Path(__file__).resolve().parents[2]  # the repository: ``tests.helpers`` for the child below

# ------------------------------------------------------------------------------ tiny pieces


def nn_eval(model: nn.Module, qloader: Any, gloader: Any) -> dict[str, float]:
    """Nearest-neighbour Rank-1 and a crude mAP stand-in (independent of hareid.evaluate)."""
    def embed(loader: Any) -> tuple[torch.Tensor, torch.Tensor]:
        fs, ps = [], []
        with torch.no_grad():
            for x, p, _c, _path in loader:
                fs.append(model(x))
                ps.append(torch.as_tensor(p))
        return torch.cat(fs), torch.cat(ps)

    qf, qp = embed(qloader)
    gf, gp = embed(gloader)
    nn_idx = torch.cdist(qf, gf).argmin(1)
    r1 = float((gp[nn_idx] == qp).float().mean())
    return {"rank1": r1, "rank5": r1, "mAP": r1 * 0.9, "mINP": r1 * 0.5}


def tiny_loaders(batch: int = 8, augment: bool = True) -> tuple[DataLoader, DataLoader, DataLoader]:
    train = TinyReID(augment=augment)
    q = TinyReID(per_id=2, seed=1, offset=100, augment=False)
    g = TinyReID(per_id=4, seed=2, offset=200, augment=False)
    return (
        DataLoader(train, batch_size=batch, sampler=EpochSampler(len(train)), drop_last=True,
                   generator=torch.Generator().manual_seed(5)),
        DataLoader(q, batch_size=16),
        DataLoader(g, batch_size=16),
    )


def run(cfg: Config, stop_at: tuple[int, int] | None = None, model_seed: int = 0,
        eval_fn: Any = nn_eval, model: nn.Module | None = None) -> tuple[Trainer, list[float], dict]:
    """Train; ``stop_at=(epoch, batch)`` requests a stop after that iteration. Returns losses."""
    losses: list[float] = []

    def record(tr: Trainer, info: dict) -> None:
        losses.append(info["loss"])
        if stop_at is not None and (info["epoch"], info["batch"]) == stop_at:
            tr.request_stop()

    torch.manual_seed(model_seed)
    tr = Trainer(cfg, model=model or TinyNet(), loaders=tiny_loaders(), eval_fn=eval_fn, num_classes=6,
                 model_spec={"name": "tiny", "num_classes": 6}, callbacks=[record])
    return tr, losses, tr.fit()


# ------------------------------------------------------------------------------------ tests


def test_fit_writes_the_run_folder(tmp_path: Path) -> None:
    tr, losses, res = run(tiny_cfg(tmp_path / "run"))
    run_dir = tmp_path / "run"
    assert len(losses) == 3 * 6 and all(math.isfinite(v) for v in losses)
    for name in ("config.yaml", "metrics.jsonl", "eval.json", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (run_dir / name).is_file(), name
    assert load_config(run_dir / "config.yaml") == tr.cfg
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_lines = [x for x in lines if "loss" in x]
    eval_lines = [x for x in lines if "mAP" in x]
    assert [x["epoch"] for x in train_lines] == [1, 2, 3] and [x["epoch"] for x in eval_lines] == [1, 2, 3]
    assert set(train_lines[0]) >= {"epoch", "iteration", "loss", "acc", "lr", "images_per_s"}
    assert set(eval_lines[0]) == {"epoch", "rank1", "rank5", "mAP", "mINP"}
    assert train_lines[-1]["iteration"] == 18
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    for key in ("state_dict", "optimizer", "scheduler", "scaler", "epoch", "iteration", "rng", "config",
                "model", "metrics"):
        assert key in ckpt, key
    assert ckpt["epoch"] == 3 and ckpt["iteration"] == 18
    assert ckpt["model"] == {"name": "tiny", "num_classes": 6}
    assert ckpt["config"]["train"]["epochs"] == 3
    ev = json.loads((run_dir / "eval.json").read_text())
    assert ev["epoch"] == 3 and res["mAP"] == ev["mAP"] and res["interrupted"] is False


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["state_dict"]


@pytest.mark.parametrize("stop_at", [(0, 5), (1, 2)], ids=["epoch-boundary", "mid-epoch"])
def test_resume_reproduces_losses_exactly(tmp_path: Path, stop_at: tuple[int, int]) -> None:
    _, full, _ = run(tiny_cfg(tmp_path / "a"))
    _, first, res1 = run(tiny_cfg(tmp_path / "b"), stop_at=stop_at)
    assert res1["interrupted"]
    ckpts = tmp_path / "b" / "checkpoints"
    if stop_at[1] == 5:  # last batch of the epoch: the epoch completes, last.pt is written
        assert not (ckpts / "interrupt.pt").exists()
        assert load_checkpoint(ckpts / "last.pt")["epoch"] == 1
    else:
        inter = load_checkpoint(ckpts / "interrupt.pt")
        assert inter["batch_in_epoch"] == stop_at[1] + 1 and inter["epoch"] == 1
        assert load_checkpoint(ckpts / "last.pt")["epoch"] == 1  # the complete epoch is untouched
    # a differently initialised model proves the weights come from the checkpoint
    _, second, res2 = run(tiny_cfg(tmp_path / "b", resume="auto"), model_seed=123)
    assert first + second == full  # bit-for-bit equal per-iteration losses
    assert not res2["interrupted"] and not (ckpts / "interrupt.pt").exists()
    wa, wb = _final_weights(tmp_path / "a"), _final_weights(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    lines = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines if "loss" in x] == [1, 2, 3]


class NaNAfter(TinyNet):
    """Produces NaN logits from the ``bad_from``-th training forward on."""

    def __init__(self, bad_from: int) -> None:
        super().__init__()
        self.calls, self.bad_from = 0, bad_from

    def forward(self, x: torch.Tensor) -> Any:
        out = super().forward(x)
        if self.training:
            self.calls += 1
            if self.calls >= self.bad_from:
                out["logits"] = [lg * float("nan") for lg in out["logits"]]
        return out


def test_nan_loss_stops_with_one_line_and_keeps_last_checkpoint(tmp_path: Path) -> None:
    cfg = tiny_cfg(tmp_path / "run")
    with pytest.raises(HareidError) as err:
        run(cfg, model=NaNAfter(bad_from=9))  # epoch 2, batch 3
    msg = str(err.value)
    assert "non-finite loss" in msg and "epoch 2 batch 3" in msg and "last.pt" in msg and "\n" not in msg
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


def test_best_checkpoint_follows_the_configured_metric(tmp_path: Path) -> None:
    scripted = iter([0.2, 0.6, 0.4])

    def fake_eval(model: nn.Module, q: Any, g: Any) -> dict[str, float]:
        m = next(scripted)
        return {"rank1": 1 - m, "rank5": 1.0, "mAP": m, "mINP": m / 2}

    _, _, res = run(tiny_cfg(tmp_path / "run"), eval_fn=fake_eval)
    best = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    assert best["epoch"] == 2 and best["metrics"]["best"] == {"metric": "mAP", "value": 0.6, "epoch": 2}
    assert res["best"]["epoch"] == 2 and res["mAP"] == 0.4
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["mAP"] == 0.4

    scripted = iter([0.2, 0.6, 0.4])
    _, _, res = run(tiny_cfg(tmp_path / "r1", best_metric="rank1"), eval_fn=fake_eval)
    assert res["best"] == {"metric": "rank1", "value": 0.8, "epoch": 1}


def test_bf16_channels_last_grad_clip_and_step_schedule(tmp_path: Path) -> None:
    cfg = tiny_cfg(tmp_path / "run", epochs=2, amp="bf16", channels_last=True, grad_clip=0.5, eval_every=0)
    cfg.optim.name, cfg.optim.scheduler, cfg.optim.warmup_epochs, cfg.optim.step_size = "sgd", "step", 0, 1
    tr, losses, res = run(cfg)
    assert tr.amp_dtype == torch.bfloat16
    assert all(math.isfinite(v) for v in losses) and res["epoch"] == 2
    assert current_lr(tr.optimizer) == pytest.approx(0.001)  # one x0.1 step after epoch 1


def test_resolve_amp() -> None:
    cpu = torch.device("cpu")
    assert resolve_amp("none", cpu) is None
    assert resolve_amp("bf16", cpu) == torch.bfloat16
    assert resolve_amp("auto", cpu) in (torch.bfloat16, None)
    with pytest.raises(ConfigError, match="fp16 needs CUDA"):
        resolve_amp("fp16", cpu)


def test_schedules_step_per_iteration_with_warmup() -> None:
    p = [nn.Parameter(torch.zeros(1))]
    cfg = OptimConfig(lr=1.0, scheduler="multistep", milestones=[3, 5], warmup_epochs=2, warmup_factor=0.1)
    opt = build_optimizer(p, cfg)
    sch = build_scheduler(opt, cfg, epochs=6, iters_per_epoch=2)
    seen = []
    for _ in range(12):
        seen.append(round(current_lr(opt), 6))
        opt.step()
        sch.step()
    assert seen == [0.1, 0.325, 0.55, 0.775, 1.0, 1.0, 0.1, 0.1, 0.1, 0.1, 0.01, 0.01]
    cos = OptimConfig(lr=1.0, scheduler="cosine", warmup_epochs=0, min_lr=0.0)
    opt = build_optimizer(p, cos)
    sch = build_scheduler(opt, cos, epochs=2, iters_per_epoch=2)
    seen = []
    for _ in range(4):
        seen.append(current_lr(opt))
        opt.step()
        sch.step()
    assert seen == pytest.approx([1.0, 0.8535534, 0.5, 0.1464466])
    assert isinstance(build_optimizer(p, OptimConfig(name="amsgrad")), torch.optim.Adam)
    assert build_optimizer(p, OptimConfig(name="amsgrad")).param_groups[0]["amsgrad"] is True
    with pytest.raises(ConfigError, match="warmup"):
        build_scheduler(opt, OptimConfig(milestones=[1, 4], warmup_epochs=2), 6, 2)


@pytest.mark.parametrize("name", ["adam", "amsgrad", "sgd"])
def test_fused_optimizer_same_updates_and_interchangeable_state(name: str) -> None:
    """build_optimizer picks the fused kernel; it follows the reference update rule, and a state dict
    of the default (per-tensor loop) implementation resumes into it (and back) without a jump."""
    cfg = OptimConfig(name=name, lr=0.05, weight_decay=0.01)
    gen = torch.Generator().manual_seed(0)
    grads = [[torch.randn(4, 3, generator=gen), torch.randn(3, generator=gen)] for _ in range(6)]

    def run(fused_from: int) -> list[torch.Tensor]:
        params = [nn.Parameter(torch.ones(4, 3)), nn.Parameter(torch.zeros(3))]
        opt = build_optimizer(params, cfg) if fused_from == 0 else None
        for i, g in enumerate(grads):
            if i == fused_from:  # switch implementations mid-run through a state dict
                state = opt.state_dict() if opt is not None else None
                opt = build_optimizer(params, cfg)
                if state is not None:
                    opt.load_state_dict(state)
            elif opt is None:
                loop_cls = torch.optim.SGD if name == "sgd" else torch.optim.Adam
                kw = {"momentum": cfg.momentum} if name == "sgd" else {"amsgrad": name == "amsgrad"}
                opt = loop_cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=False, **kw)
            for p, gp in zip(params, g):
                p.grad = gp.clone()
            opt.step()
        return [p.detach() for p in params]

    assert build_optimizer([nn.Parameter(torch.zeros(1))], cfg).defaults.get("fused") is True
    fused, mixed = run(0), run(3)  # fused throughout vs loop for 3 steps, then fused from its state
    for a, b in zip(fused, mixed):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_hacnn_checkpoint_rebuilds_from_its_model_entry(tmp_path: Path) -> None:
    """Integration with hareid.models: the checkpoint's ``model`` entry rebuilds the network."""
    models = pytest.importorskip("hareid.models")

    class Big(TinyReID):
        def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int, str]:
            x, p, c, path = super().__getitem__(i)
            return F.interpolate(x[None], size=(64, 32))[0], p, c, path

    cfg = load_config(None, [f"output_dir={tmp_path / 'run'}", "train.epochs=1", "train.amp=none",
                             "train.progress=false", "train.eval_every=0", "model.num_regions=2",
                             "model.feature_dim=32", "loss.triplet_weight=1", "train.device=cpu"])
    train = DataLoader(Big(ids=4, per_id=2), batch_size=8, sampler=EpochSampler(8), drop_last=True)
    tr = Trainer(cfg, loaders=(train, None, None), num_classes=4)
    res = tr.fit()
    assert math.isfinite(res["loss"])
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ckpt["model"]["name"] == "hacnn" and ckpt["model"]["num_regions"] == 2
    net = models.build_model(**ckpt["model"])
    net.load_state_dict(ckpt["state_dict"])


SIGTERM_SCRIPT = """
import time, torch
from tests.helpers.toys import TinyNet, TinyReID, EpochSampler, tiny_cfg
from torch.utils.data import DataLoader
from hareid.engine import Trainer
from pathlib import Path

class Slow(TinyReID):
    def __getitem__(self, i):
        time.sleep(0.01)
        return super().__getitem__(i)

ds = Slow(ids=6, per_id=40)
train = DataLoader(ds, batch_size=8, sampler=EpochSampler(len(ds)), drop_last=True)
def tell(tr, info):
    if info["iteration"] == 2:
        print("STEP", flush=True)
cfg = tiny_cfg(Path({out!r}), epochs=2, eval_every=0)
res = Trainer(cfg, model=TinyNet(), loaders=(train, None, None), num_classes=6, callbacks=[tell]).fit()
print("RESULT", res["interrupted"], flush=True)
"""


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path: Path) -> None:
    script = tmp_path / "train_sigterm.py"
    script.write_text(textwrap.dedent(SIGTERM_SCRIPT.format(out=str(tmp_path / "run"))))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "STEP", proc.stderr.read()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "RESULT True" in out
    assert "SIGTERM" in err and "interrupt.pt" in err
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "interrupt.pt")
    assert ckpt["epoch"] == 0 and 2 <= ckpt["batch_in_epoch"] < 30 and ckpt["iteration"] == ckpt["batch_in_epoch"]


@pytest.mark.slow
def test_torch_compile_trains_and_saves_plain_weights(tmp_path: Path) -> None:
    """``train.compile``: inductor on CPU (compiling takes a minute here, hence slow)."""
    _, losses, _ = run(tiny_cfg(tmp_path / "run", epochs=1, compile=True, eval_every=0))
    assert all(math.isfinite(v) for v in losses)
    sd = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["state_dict"]
    assert not any(k.startswith("_orig_mod.") for k in sd)
