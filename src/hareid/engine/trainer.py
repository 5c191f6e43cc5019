"""The training loop: :class:`Trainer` runs a :class:`~hareid.config.Config` end to end.

Run folder (``cfg.output_dir``; one run per folder, see :mod:`hareid.engine.state`)::

    config.yaml              the resolved config
    metrics.jsonl            per epoch and per evaluation records (:class:`~hareid.engine.logger.RunLogger`)
    init.json                where the weights started (``model.init``): path, sha256, tensors loaded
    checkpoints/last.pt      end of the latest completed epoch, written BEFORE its evaluation
    checkpoints/best.pt      the evaluated epoch with the highest ``train.best_metric``
    checkpoints/interrupt.pt only after SIGINT/SIGTERM mid-epoch (removed once an epoch completes)
    eval.json                the final EvalResult.to_dict() (+ "epoch")
    tb/                      TensorBoard events when ``train.tensorboard``

Every write is atomic. At the end of an epoch ``last.pt`` is saved first (marked ``pending_eval``
when an evaluation is due), then the epoch is evaluated, then ``best.pt`` (if better) and ``last.pt``
again; a run killed anywhere in between resumes by evaluating that epoch again, so ``best.pt``
cannot go missing, and an evaluation that fails loses no training.

Resume (``train.resume=auto`` or a path) restores model, optimiser, scheduler, grad scaler, epoch,
iteration, sampler epoch and the torch / numpy / python / loader-generator RNG states, so that on
CPU with ``data.workers=0`` the resumed run reproduces the uninterrupted run's per-iteration losses
bit for bit. A stop mid-epoch (signal or :meth:`Trainer.request_stop`) finishes the current
iteration and writes ``interrupt.pt`` holding the state at that iteration plus the RNG state at the
start of the epoch; resuming from it replays the epoch's data order, skips the batches already
trained on, and continues exactly. With ``workers > 0`` the worker processes own the augmentation
RNG, so a resume is statistically equivalent but not bitwise identical. A resume may change where
and how the run computes, not what it learns (:func:`~hareid.engine.state.check_resume_config`).

A NaN/inf loss stops the run with one :class:`~hareid.errors.HareidError` line before the bad step
is applied; the last good checkpoint stays untouched.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hareid import distributed as hdist
from hareid.checkpoint import load_checkpoint, save_checkpoint
from hareid.config import Config, save_config
from hareid.engine.logger import RunLogger
from hareid.engine.losses import ReIDLoss
from hareid.engine.optim import build_optimizer, build_scheduler, current_lr
from hareid.engine.state import (
    RunFolder,
    check_resume_config,
    get_rng_state,
    samplers,
    set_rng_state,
)
from hareid.errors import CheckpointError, ConfigError, HareidError
from hareid.fileio import atomic_write_text, ensure_disjoint
from hareid.runtime import resolve_amp, resolve_device, set_seed

__all__ = ["Trainer"]

EvalFn = Callable[[nn.Module, Any, Any], Any]
Callback = Callable[["Trainer", dict[str, Any]], None]


def _first_logits(x: Any) -> torch.Tensor | None:
    if isinstance(x, Mapping):
        x = x.get("logits")
    if isinstance(x, (list, tuple)):
        x = x[0] if x else None
    return x


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def use_masks(attn_weight: float, dataset: Any, say: bool = True) -> bool:
    """Whether training batches should carry person masks: the attention loss is on and every
    training image of ``dataset`` has one; otherwise the run trains without the term and (``say``)
    says so once."""
    if attn_weight <= 0:
        return False
    if getattr(dataset, "has_masks", False):
        return True
    if say:
        print(f"[hareid] {getattr(dataset, 'name', 'this dataset')} has no person masks: training "
              "without the attention loss (loss.attn_weight ignored)", flush=True)
    return False


class Trainer:
    """Train ``cfg.model`` on ``cfg.data``; everything may be injected for tests or embedding.

    Args:
        cfg: the run's :class:`Config`.
        model: a ready model (else ``build_model(cfg.model.name, num_classes, **cfg.model.options)``,
            started from ``cfg.model.init`` when set).
        dataset: a :class:`~hareid.data.ReIDDataset` (else ``build_dataset(cfg.data.name, root)``).
        loaders: ``(train, query, gallery)`` loaders (else ``build_loaders(dataset, ...)``); query
            and gallery may be ``None`` to skip evaluation.
        eval_fn: ``fn(model, query_loader, gallery_loader) -> EvalResult | Mapping`` (default:
            :func:`hareid.evaluate.evaluate` with ``cfg.eval``, sharded across ranks under DDP).
        num_classes: classifier size when it cannot be read from ``dataset``.
        model_spec: ``{"name": ..., **build kwargs}`` stored in checkpoints for an injected model.
        callbacks: ``fn(trainer, info)`` after every iteration; ``info`` holds epoch (0-based),
            batch, iteration, loss, lr.
        overwrite: start a new run in a folder that holds another run (its files are kept until
            this run saves its first checkpoint).
        init_report: what ``model.init`` already loaded into ``model`` (an
            :class:`~hareid.models.weights.InitReport`, from a caller that read the file once):
            recorded in ``init.json`` and not loaded again.
    """

    def __init__(
        self,
        cfg: Config,
        model: nn.Module | None = None,
        dataset: Any = None,
        loaders: Sequence[Any] | None = None,
        eval_fn: EvalFn | None = None,
        num_classes: int | None = None,
        model_spec: Mapping[str, Any] | None = None,
        callbacks: Sequence[Callback] = (),
        overwrite: bool = False,
        init_report: Any = None,
        compete: torch.Tensor | None = None,
    ) -> None:
        self.cfg = cfg
        self._compete = compete  # (K, K) bool: which classes the loss tells apart (ReIDLoss.compete)
        self._init_in = init_report
        self._model_in, self.dataset, self._loaders_in = model, dataset, loaders
        self._eval_fn = eval_fn
        self._num_classes = num_classes
        self._model_spec = dict(model_spec) if model_spec is not None else None
        self.callbacks = list(callbacks)
        self.last_attn: float | None = None  # the last step's attention-loss term (loss.attn_weight > 0)
        self.overwrite = overwrite
        self.run_dir = Path(cfg.output_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.epoch = 0  # completed epochs
        self.iteration = 0  # optimiser steps taken
        self.best: dict[str, Any] = {}
        self.last_eval: dict[str, Any] | None = None
        self.last_result: Any = None  # the latest EvalResult (rank 0), e.g. for ranked-list pictures
        self.init_report: Any = None  # hareid.models.weights.InitReport when model.init is set
        self._stop_signal: int | None = None
        self._stop_requested = False
        self._ready = False
        self._folder: RunFolder | None = None

    # ---------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        """Build everything (idempotent); :meth:`fit` calls it."""
        if self._ready:
            return
        cfg, t = self.cfg, self.cfg.train
        had_group = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.dist = hdist.init_distributed(device=t.device)
        self._owns_group = self.dist.enabled and not had_group  # fit() then leaves the group at the end
        self.device = resolve_device(t.device, self.dist.local_rank)
        self.amp_dtype = resolve_amp(t.amp, self.device)
        self.eval_dtype = resolve_amp(cfg.eval.amp, self.device, "eval.amp")
        set_seed(t.seed + self.dist.rank)
        if t.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.loss_fn = ReIDLoss(cfg.loss.ce_weight, cfg.loss.label_smooth, cfg.loss.triplet_weight,
                                cfg.loss.margin, cfg.loss.attn_weight, cfg.loss.attn_form)
        self.loss_fn.compete = self._compete
        self._build_data()
        self._build_model()
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.iters_per_epoch = len(self.train_loader)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, t.epochs, self.iters_per_epoch)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.log = RunLogger(self.run_dir, self.is_main, t.tensorboard, t.progress)
        self._ready = True

    @property
    def is_main(self) -> bool:
        """Rank 0 (or a single process): the one that writes files and prints."""
        dist = getattr(self, "dist", None)
        return dist is None or dist.is_main

    def _build_data(self) -> None:
        cfg, d = self.cfg, self.cfg.data
        world = self.dist.world_size
        if self._loaders_in is not None:
            self.train_loader, self.query_loader, self.gallery_loader = [*self._loaders_in, None, None][:3]
        else:
            if d.batch_size % world or (d.batch_size // world) % d.num_instances:
                raise ConfigError(
                    f"data.batch_size={d.batch_size} must split into {world} per-process batches that "
                    f"are multiples of data.num_instances={d.num_instances}"
                )
            from hareid.data import build_dataset, build_loaders
            from hareid.models import model_entry

            if self.dataset is None:
                self.dataset = build_dataset(d.name, d.root, verbose=self.dist.is_main, **d.options)
            entry = model_entry(cfg.model.name)
            masks = self._use_masks(self.dataset)
            self.train_loader, self.query_loader, self.gallery_loader = build_loaders(
                self.dataset, height=d.height, width=d.width, batch_size=d.batch_size // world,
                num_instances=d.num_instances, workers=d.workers, test_batch_size=d.test_batch_size,
                seed=cfg.train.seed, rank=self.dist.rank, world_size=world,
                skip_bad_images=d.skip_bad_images, flip=d.flip, pad=d.pad, erasing=d.erasing,
                color_jitter=d.color_jitter, mean=entry.mean, std=entry.std, masks=masks, **d.loader_options,
            )
            self._check_evaluable()
        if self.train_loader is None:
            raise ConfigError("no training loader: pass loaders=(train, query, gallery) or a dataset")

    def _use_masks(self, dataset: Any) -> bool:
        masks = use_masks(self.cfg.loss.attn_weight, dataset, self.is_main)
        if not masks:
            self.loss_fn.attn_weight = 0.0
        return masks

    def _check_evaluable(self) -> None:
        """Refuse, before training, a query/gallery split on which no query can be scored."""
        from hareid.evaluate.metrics import count_valid_queries

        ds = self.dataset
        if (self.query_loader is None or self.cfg.train.eval_every < 0 or not getattr(ds, "query", None)
                or not getattr(ds, "gallery", None)):
            return
        if count_valid_queries([r.pid for r in ds.query], [r.pid for r in ds.gallery],
                               [r.camid for r in ds.query], [r.camid for r in ds.gallery]) == 0:
            raise ConfigError(
                f"data: no query of {ds.name} at {ds.root} has a correct match in the gallery (the same "
                "identity seen by another camera), so evaluation cannot score anything; give the "
                "images camera ids, or train without evaluation (train.eval_every=-1)"
            )

    def _build_model(self) -> None:
        cfg = self.cfg
        num_classes = self._num_classes
        if num_classes is None and self.dataset is not None:
            num_classes = int(self.dataset.num_train_pids)
        if self._model_in is not None:
            model = self._model_in
            spec = self._model_spec or {"name": cfg.model.name, **cfg.model.options}
            if num_classes is not None:
                spec.setdefault("num_classes", num_classes)
        else:
            if num_classes is None:
                raise ConfigError("num_classes unknown: pass a dataset or num_classes to Trainer")
            from hareid.models import build_model

            kwargs = {**cfg.model.options, "return_features": self.loss_fn.needs_features}
            try:
                model = build_model(cfg.model.name, num_classes=num_classes, **kwargs)
            except (TypeError, ValueError) as e:
                raise ConfigError(f"model.{cfg.model.name}: {str(e).splitlines()[0]}") from e
            spec = {"name": cfg.model.name, "num_classes": num_classes, **kwargs}
        if cfg.model.init and self._init_in is not None:
            self.init_report = self._init_in  # the caller loaded model.init into `model` already
        elif cfg.model.init:
            from hareid.models.weights import load_init_weights

            self.init_report = load_init_weights(model, cfg.model.init)
        self.model_spec = spec
        if self.loss_fn.needs_attention:
            if not hasattr(model, "return_attention"):
                raise ConfigError(f"loss.attn_weight > 0 needs a model with soft attention masks; "
                                  f"{type(model).__name__} has none; set loss.attn_weight=0")
            if not getattr(model, "soft_attn", True):
                raise ConfigError("loss.attn_weight > 0 teaches the soft masks, but soft attention is off "
                                  "(model.soft_attn=false); turn one of them on or the other off")
            model.return_attention = True
        model = model.to(self.device)
        if cfg.train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.dist.enabled and cfg.train.sync_bn:  # one process: plain BatchNorm is already "synced"
            if self.device.type != "cuda":
                raise ConfigError("train.sync_bn=true needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel); "
                                  "set train.sync_bn=false")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model  # the bare module: checkpoints, evaluation
        train_model: nn.Module = model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            train_model = DDP(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=cfg.train.find_unused_parameters,
            )
        if cfg.train.compile:
            train_model = torch.compile(train_model)  # type: ignore[assignment]
        self.train_model = train_model

    # ----------------------------------------------------------------------------- checkpoint
    def collect_state(self, batch_in_epoch: int = 0, progress: Mapping[str, Any] | None = None,
                      rng_epoch_start: Mapping[str, Any] | None = None,
                      pending_eval: bool = False) -> dict[str, Any]:
        """The training checkpoint (docs/architecture.md keys, plus mid-epoch extras).

        Collective under DDP: every rank must call it (each rank's RNG state is all-gathered).
        """
        found = [s.state_dict() for s in samplers(self.train_loader) if hasattr(s, "state_dict")]
        state: dict[str, Any] = {
            "state_dict": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "iteration": self.iteration,
            "rng": get_rng_state(self.train_loader),
            "config": self.cfg.to_dict(),
            "model": dict(self.model_spec),
            "metrics": {"best": dict(self.best), "last_eval": dict(self.last_eval or {})},
            "batch_in_epoch": batch_in_epoch,
            "pending_eval": pending_eval,
            "world_size": self.dist.world_size,
        }
        if self.init_report is not None:
            state["init"] = {k: v for k, v in self.init_report.to_dict().items() if k in ("path", "sha256", "source")}
        if found:
            state["sampler"] = found[0]
        if batch_in_epoch:
            state["progress"] = dict(progress or {})
            state["rng_epoch_start"] = rng_epoch_start
        if self.dist.enabled:
            state["rng_ranks"] = hdist.all_gather_object(
                {"rng": state["rng"], "rng_epoch_start": rng_epoch_start})
        return state

    def _rng_from(self, ckpt: Mapping[str, Any], key: str) -> Mapping[str, Any]:
        """This rank's saved RNG state ``key`` (``rng`` or ``rng_epoch_start``)."""
        ranks = ckpt.get("rng_ranks")
        if ranks and len(ranks) == self.dist.world_size and ranks[self.dist.rank].get(key) is not None:
            return ranks[self.dist.rank][key]
        return ckpt[key]

    def _save(self, name: str, state: Mapping[str, Any]) -> Path:
        path = save_checkpoint(state, self.ckpt_dir / name)
        if self._folder is not None:
            self._folder.saved()
        return path

    def _resume_path(self) -> Path | None:
        """The checkpoint to resume from: ``train.resume`` as a path, or for ``auto`` the newer of
        this folder's ``interrupt.pt`` and ``last.pt`` (none with ``--overwrite``: a new run)."""
        spec = self.cfg.train.resume
        if not spec:
            return None
        if spec != "auto":
            return Path(spec)
        if self.overwrite:
            return None
        inter, last = self.ckpt_dir / "interrupt.pt", self.ckpt_dir / "last.pt"
        if inter.is_file() and last.is_file():  # a kill between writing last.pt and removing interrupt.pt
            return inter if self._completed_epochs(inter) >= self._completed_epochs(last) else last
        return next((p for p in (inter, last) if p.is_file()), None)

    @staticmethod
    def _completed_epochs(path: Path) -> int:
        return int(load_checkpoint(path).get("epoch", 0))

    def load(self, path: str | os.PathLike) -> dict[str, Any]:
        """Restore a training checkpoint; returns it (RNG is restored by :meth:`fit`)."""
        ckpt = load_checkpoint(path, map_location=self.device)
        missing = [k for k in ("state_dict", "optimizer", "scheduler", "epoch", "iteration", "rng") if k not in ckpt]
        if missing:
            raise CheckpointError(f"{path}: not a training checkpoint (missing {missing}); pass last.pt")
        if isinstance(ckpt.get("config"), Mapping):
            check_resume_config(ckpt["config"], self.cfg.to_dict(), f"resume from {path}")
        saved_classes = (ckpt.get("model") or {}).get("num_classes")
        classes = self.model_spec.get("num_classes")
        if saved_classes is not None and classes is not None and int(saved_classes) != int(classes):
            raise CheckpointError(
                f"{path}: the run was trained on {saved_classes} identities but data.root={self.cfg.data.root} "
                f"has {classes}; resume with the data the run was trained on, or start a new run from "
                f"its weights with model.init={path}"
            )
        try:
            self.model.load_state_dict(ckpt["state_dict"])
        except RuntimeError as e:
            raise CheckpointError(f"{path}: weights do not fit model {self.cfg.model.name!r} "
                                  f"({str(e).splitlines()[-1].strip()}); resume with the run's own settings, "
                                  f"or start a new run from its weights with model.init={path}") from e
        if int(ckpt.get("world_size", 1)) != self.dist.world_size and int(ckpt.get("batch_in_epoch", 0)):
            raise CheckpointError(f"{path}: a mid-epoch checkpoint from {ckpt.get('world_size')} processes "
                                  f"cannot resume on {self.dist.world_size}; use checkpoints/last.pt")
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            if ckpt.get("scaler"):
                self.scaler.load_state_dict(ckpt["scaler"])
        except (KeyError, ValueError, RuntimeError, TypeError) as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"{path}: its optimiser or schedule state does not fit this run ({reason}); "
                                  f"start a new run from its weights with model.init={path}") from e
        self.epoch, self.iteration = int(ckpt["epoch"]), int(ckpt["iteration"])
        metrics = ckpt.get("metrics") or {}
        self.best = dict(metrics.get("best") or {})
        self.last_eval = dict(metrics.get("last_eval") or {}) or None
        for s in samplers(self.train_loader):
            if "sampler" in ckpt and hasattr(s, "load_state_dict"):
                s.load_state_dict(ckpt["sampler"])
        return ckpt

    # ------------------------------------------------------------------------------- signals
    def request_stop(self) -> None:
        """Stop after the current iteration, saving a checkpoint (what SIGINT/SIGTERM do)."""
        self._stop_requested = True

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._stop_requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: leave now
        self._stop_signal = signum
        self._stop_requested = True

    def _install_signals(self) -> dict[int, Any]:
        old: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                old[sig] = signal.signal(sig, self._on_signal)
        return old

    # ---------------------------------------------------------------------------------- eval
    def evaluate(self) -> dict[str, Any] | None:
        """Evaluate the current model; ``None`` without query/gallery loaders. Same dict on all ranks."""
        if self.query_loader is None or self.gallery_loader is None:
            return None
        e, model = self.cfg.eval, self.model
        was_training = model.training
        model.eval()
        try:
            if self._eval_fn is not None:
                res = self._eval_fn(model, self.query_loader, self.gallery_loader) if self.is_main else None
            else:
                from hareid.evaluate import evaluate

                res = evaluate(model, self.query_loader, self.gallery_loader, metric=e.metric, flip=e.flip,
                               rerank=e.rerank, protocol=e.protocol, max_rank=e.max_rank,
                               dtype=self.eval_dtype, progress=self.cfg.train.progress,
                               distributed=self.dist.enabled)
        finally:
            model.train(was_training)
        if res is not None:
            self.last_result = res
        out = None if res is None else {
            k: (float(v) if isinstance(v, (np.floating, np.integer)) else v)
            for k, v in (res.to_dict() if hasattr(res, "to_dict") else dict(res)).items()}
        return hdist.broadcast_object(out)

    def _run_eval(self) -> None:
        metrics = self.evaluate()
        if metrics is None:
            return
        self.last_eval = metrics
        rec = {"epoch": self.epoch, **{k: metrics[k] for k in ("rank1", "rank5", "mAP", "mINP") if k in metrics}}
        self.log.record(rec, scalars_prefix="eval")
        self.log.say(f"epoch {self.epoch}: " + " ".join(f"{k}={_fmt(float(v))}" for k, v in rec.items()
                                                       if k != "epoch"))
        key = self.cfg.train.best_metric
        if key in metrics and (not self.best or float(metrics[key]) > float(self.best.get("value", -math.inf))):
            self.best = {"metric": key, "value": float(metrics[key]), "epoch": self.epoch}

    # ---------------------------------------------------------------------------------- loop
    def _autocast(self) -> Any:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _check_finite(self, value: float, epoch: int, batch: int) -> None:
        if math.isfinite(value):
            return
        last = self.ckpt_dir / "last.pt"
        kept = f"last good checkpoint kept: {last}" if last.is_file() else "no checkpoint written yet"
        raise HareidError(
            f"non-finite loss ({value}) at epoch {epoch + 1} batch {batch + 1} (iteration {self.iteration + 1}); "
            f"training stopped, {kept}; lower optim.lr, set train.grad_clip, or use train.amp=none"
        )

    def _step(self, images: torch.Tensor, pids: Any, epoch: int, batch: int,
              person: torch.Tensor | None = None) -> tuple[float, int, int, bool]:
        """One optimiser step (``person``: the batch's person masks, for the attention loss); returns
        ``(loss, correct, batch size, stop requested on any rank)``."""
        t = self.cfg.train
        images = images.to(self.device, non_blocking=True)
        if t.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = torch.as_tensor(pids).to(self.device, non_blocking=True)
        if person is not None:
            person = person.to(self.device, non_blocking=True)
        with self._autocast():
            outputs = self.train_model(images)
        loss, parts = self.loss_fn(outputs, targets, person if self.loss_fn.needs_attention else None)
        self.last_attn = float(parts["attn"]) if "attn" in parts else None  # the attention term, for the log
        logits = _first_logits(outputs)
        correct = int((logits.argmax(1) == targets).sum()) if logits is not None else 0
        loss_val, stop = float(loss.detach()), self._stop_requested
        if self.dist.enabled:  # one all-reduce: every rank agrees on NaN and on stopping
            flags = torch.tensor([loss_val, float(stop)], dtype=torch.float64,
                                 device=self.device if self.dist.backend == "nccl" else "cpu")
            torch.distributed.all_reduce(flags)
            loss_val, stop = float(flags[0]) / self.dist.world_size, bool(flags[1] > 0)
            self._stop_requested = self._stop_requested or stop
        self._check_finite(loss_val, epoch, batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if t.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], t.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.iteration += 1
        return loss_val, correct, int(targets.shape[0]), stop

    def _train_epoch(self, epoch: int, skip: int = 0, progress: Mapping[str, Any] | None = None,
                     rng_after_skip: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """One epoch (0-based ``epoch``); returns its stats, with ``stopped_at`` if interrupted."""
        for s in samplers(self.train_loader):
            if hasattr(s, "set_epoch"):
                s.set_epoch(epoch)
        rng_start = get_rng_state(self.train_loader)
        self.train_model.train()
        stats = {"loss_sum": 0.0, "correct": 0, "seen": 0, "time": 0.0, **dict(progress or {})}
        n_batches, world = self.iters_per_epoch, self.dist.world_size
        bar = self.log.bar(n_batches, skip, f"epoch {epoch + 1}/{self.cfg.train.epochs}")
        it = iter(self.train_loader)
        for _ in range(skip):  # replay the data order (and augmentation RNG) of the trained batches
            next(it)
        if rng_after_skip is not None:
            set_rng_state(rng_after_skip, self.train_loader)
        tic = time.perf_counter()
        stopped_at: int | None = None
        try:
            for b in range(skip, n_batches):
                batch = next(it, None)
                if batch is None:
                    break
                person = batch[4] if len(batch) > 4 else None  # masks=True loaders
                loss_val, correct, bs, stop = self._step(batch[0], batch[1], epoch, b, person)
                stats["loss_sum"] += loss_val * bs
                if self.last_attn is not None:
                    stats["attn_sum"] = stats.get("attn_sum", 0.0) + self.last_attn * bs
                stats["correct"] += correct
                stats["seen"] += bs
                elapsed = stats["time"] + time.perf_counter() - tic
                lr = current_lr(self.optimizer)
                bar.update(1)
                bar.set_postfix(loss=_fmt(stats["loss_sum"] / stats["seen"]),
                                acc=f"{stats['correct'] / stats['seen']:.3f}", lr=f"{lr:.2e}",
                                img_s=f"{stats['seen'] * world / max(elapsed, 1e-9):.0f}", refresh=False)
                self.log.scalar("train/loss", loss_val, self.iteration)
                self.log.scalar("train/lr", lr, self.iteration)
                info = {"epoch": epoch, "batch": b, "iteration": self.iteration, "loss": loss_val, "lr": lr}
                for cb in self.callbacks:
                    cb(self, info)
                if not self.dist.enabled:  # under DDP the all-reduced flag in _step decides (same on all ranks)
                    stop = self._stop_requested
                if stop and b + 1 < n_batches:
                    stopped_at = b + 1
                    break
        finally:
            bar.close()
        stats["time"] += time.perf_counter() - tic
        seen = max(stats["seen"], 1)
        out = {"epoch": epoch + 1, "iteration": self.iteration, "loss": stats["loss_sum"] / seen,
               "acc": stats["correct"] / seen, "lr": current_lr(self.optimizer),
               "images_per_s": stats["seen"] * world / max(stats["time"], 1e-9)}
        if "attn_sum" in stats:  # the attention term's own mean: how well the soft masks fit the person
            out["attn_loss"] = stats["attn_sum"] / seen
        if stopped_at is not None:
            out.update(stopped_at=stopped_at, _progress=stats, _rng_epoch_start=rng_start)
        return out

    def _agree_stop(self) -> bool:
        """Whether any rank was asked to stop (all ranks get the same answer)."""
        stop = self._stop_requested
        if self.dist.enabled:
            flag = torch.tensor([float(stop)], device=self.device if self.dist.backend == "nccl" else "cpu")
            torch.distributed.all_reduce(flag)
            stop = bool(flag.item() > 0)
            self._stop_requested = stop
        return stop

    def _eval_due(self, epoch: int) -> bool:
        every = self.cfg.train.eval_every  # N: every N epochs and at the end; 0: at the end; -1: never
        return self.query_loader is not None and every >= 0 and (
            (every > 0 and epoch % every == 0) or epoch == self.cfg.train.epochs)

    def _end_epoch(self, evaluate: bool) -> None:
        """Checkpoint the completed epoch, then evaluate it, then record the best (see module doc)."""
        state = self.collect_state(pending_eval=evaluate)
        if self.is_main:
            self._save("last.pt", state)
            (self.ckpt_dir / "interrupt.pt").unlink(missing_ok=True)
        if not evaluate:
            return
        self._run_eval()
        state = self.collect_state()
        if self.is_main:
            if self.best.get("epoch") == self.epoch:
                self._save("best.pt", state)
            self._save("last.pt", state)

    def _start(self) -> tuple[int, Any, Any, bool]:
        """Resume if asked (restoring RNG); write config.yaml. Returns the mid-epoch resume state."""
        resume = self._resume_path()
        if resume is not None and not resume.is_file():
            raise CheckpointError(f"{resume}: checkpoint to resume from not found; use train.resume=auto")
        own = resume is not None and resume.resolve().parent == self.ckpt_dir.resolve()
        if own and self.overwrite:
            raise ConfigError(f"train.resume={resume}: --overwrite starts a new run in {self.run_dir}, which "
                              "cannot resume from that folder's own checkpoint; drop one of them")
        if self._folder is not None:
            self._folder.claim(own_resume=own)
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        skip, progress, rng_after_skip, pending = 0, None, None, False
        if resume is not None:
            ckpt = self.load(resume)
            skip = int(ckpt.get("batch_in_epoch", 0))
            pending = bool(ckpt.get("pending_eval", False))
            if skip:
                progress = ckpt.get("progress")
                rng_after_skip = self._rng_from(ckpt, "rng")
                set_rng_state(self._rng_from(ckpt, "rng_epoch_start"), self.train_loader)
            else:
                set_rng_state(self._rng_from(ckpt, "rng"), self.train_loader)
            self.log.trim(self.epoch, keep_last_eval=not pending)  # a pending evaluation is redone
            self.log.say(f"hareid: resumed from {resume} (epoch {self.epoch}, iteration {self.iteration}"
                         + (f", batch {skip} of epoch {self.epoch + 1})" if skip else ")"))
        if self.is_main:
            save_config(self.cfg, self.run_dir / "config.yaml")
            if self.init_report is not None and resume is None:
                atomic_write_text(self.run_dir / "init.json", json.dumps(self.init_report.to_dict(), indent=1))
                self.log.say(self.init_report.summary())
        hdist.barrier()
        return skip, progress, rng_after_skip, pending

    def fit(self) -> dict[str, Any]:
        """Train for ``cfg.train.epochs`` epochs (resuming if asked); returns the final metrics.

        Under torchrun, a process group that ``fit`` itself created is destroyed when it returns;
        call :func:`hareid.distributed.init_distributed` first to keep the group for later work.

        The result holds the last epoch's train stats, the final evaluation (``rank1``, ``mAP``,
        ...), ``best`` ({"metric", "value", "epoch"}), ``run_dir``, ``interrupted`` and ``rank``.
        """
        self.setup()
        if self.is_main:  # the run folder may not be, hold or sit inside what the run reads
            own = self.run_dir / "tracklets"  # `hareid adapt`'s own input, written into the run folder
            inputs = [p for p in (self.cfg.data.root, self.cfg.model.init)
                      if p and not Path(p).expanduser().absolute().is_relative_to(own.absolute())]
            ensure_disjoint(self.run_dir, inputs, option="output_dir")
        self._folder = RunFolder(self.run_dir, overwrite=self.overwrite) if self.is_main else None
        with self._folder or nullcontext():
            interrupted, train_stats = self._fit()
        if self._owns_group:  # a torchrun script that let the Trainer join the group: leave it cleanly
            hdist.cleanup_distributed()
            self._owns_group = False
        result = {k: v for k, v in train_stats.items() if not k.startswith("_")}
        result.update({k: v for k, v in (self.last_eval or {}).items() if k != "cmc"})
        result.update(best=dict(self.best), run_dir=str(self.run_dir), interrupted=interrupted,
                      epoch=self.epoch, iteration=self.iteration, rank=self.dist.rank)
        return result

    def _fit(self) -> tuple[bool, dict[str, Any]]:
        t = self.cfg.train
        skip, progress, rng_after_skip, pending = self._start()
        old_handlers = self._install_signals()
        train_stats: dict[str, Any] = {}
        interrupted = False
        try:
            if pending or (not skip and self.epoch == t.epochs and self.last_eval is None and self._eval_due(self.epoch)):
                self._end_epoch(evaluate=True)  # the run stopped between an epoch and its evaluation
            while self.epoch < t.epochs:
                epoch = self.epoch
                train_stats = self._train_epoch(epoch, skip, progress, rng_after_skip)
                skip, progress, rng_after_skip = 0, None, None
                if "stopped_at" in train_stats:
                    interrupted = True
                    state = self.collect_state(train_stats["stopped_at"], train_stats.pop("_progress"),
                                               train_stats.pop("_rng_epoch_start"))
                    if self.is_main:
                        path = self._save("interrupt.pt", state)
                        why = signal.Signals(self._stop_signal).name if self._stop_signal else "stop request"
                        self.log.say(f"hareid: {why}: saved {path} (epoch {epoch + 1}, batch "
                                     f"{train_stats['stopped_at']}/{self.iters_per_epoch}); resume with "
                                     "train.resume=auto")
                    break
                self.epoch = epoch + 1
                self.log.record(train_stats)
                self.log.scalar("train/acc", train_stats["acc"], self.epoch)
                self.log.scalar("train/images_per_s", train_stats["images_per_s"], self.epoch)
                self._end_epoch(evaluate=self._eval_due(self.epoch))
                if self._agree_stop():
                    interrupted = True
                    self.log.say(f"hareid: stopped after epoch {self.epoch}; saved {self.ckpt_dir / 'last.pt'}; "
                                 "resume with train.resume=auto")
                    break
        finally:
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
            self.log.close()
        if not interrupted and self.is_main and self.last_eval:
            atomic_write_text(self.run_dir / "eval.json", json.dumps({**self.last_eval, "epoch": self.epoch}, indent=1))
        return interrupted, train_stats
