"""The training engine: :class:`Trainer` runs a :class:`~hareid.config.Config` end to end.

Run folder (``cfg.output_dir``)::

    config.yaml              the resolved config
    metrics.jsonl            per epoch {"epoch","iteration","loss","acc","lr","images_per_s",...};
                             per evaluation {"epoch","rank1","rank5","mAP","mINP"}
    checkpoints/last.pt      end of the latest completed epoch (atomic write)
    checkpoints/best.pt      the evaluated epoch with the highest ``train.best_metric`` (mAP)
    checkpoints/interrupt.pt only after SIGINT/SIGTERM mid-epoch (removed once an epoch completes)
    eval.json                the final EvalResult.to_dict() (+ "epoch")
    tb/                      TensorBoard events when ``train.tensorboard``

Resume (``train.resume=auto`` or a path) restores model, optimiser, scheduler, grad scaler, epoch,
iteration, sampler epoch and the torch / numpy / python / loader-generator RNG states, so that on
CPU with ``data.workers=0`` the resumed run reproduces the uninterrupted run's per-iteration losses
bit for bit. A stop mid-epoch (signal or :meth:`Trainer.request_stop`) finishes the current
iteration and writes ``interrupt.pt`` holding the state at that iteration plus the RNG state at the
start of the epoch; resuming from it replays the epoch's data order, skips the batches already
trained on, and continues exactly. ``last.pt`` (the last complete epoch) is never overwritten by an
interrupt. With ``workers > 0`` the worker processes own the augmentation RNG, so a resume is
statistically equivalent but not bitwise identical.

A NaN/inf loss stops the run with one :class:`~hareid.errors.HareidError` line before the bad step
is applied; the last good checkpoint stays untouched.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from hareid import distributed as hdist
from hareid.checkpoint import load_checkpoint, save_checkpoint
from hareid.config import Config, save_config
from hareid.errors import CheckpointError, ConfigError, HareidError
from hareid.losses import ReIDLoss
from hareid.optim import build_optimizer, build_scheduler, current_lr

__all__ = ["Trainer", "get_rng_state", "resolve_amp", "resolve_device", "set_rng_state", "set_seed"]

EvalFn = Callable[[nn.Module, Any, Any], Any]
Callback = Callable[["Trainer", dict[str, Any]], None]


# ------------------------------------------------------------------------------------- helpers


def resolve_device(spec: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:LOCAL_RANK`` when CUDA is available, else ``cpu``."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cuda":
        spec = f"cuda:{local_rank}"
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={spec}: CUDA is not available here; use train.device=cpu or auto")
    return dev


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp`` on ``device`` (``None`` = full precision).

    ``auto``: fp16 (with a grad scaler) on CUDA; bf16 on a CPU with native bf16 support (oneDNN),
    where convolutions run ~2.8x faster than fp32; else fp32.
    """
    if amp == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if _cpu_has_bf16() else None
    if amp == "none":
        return None
    if amp == "fp16":
        if device.type != "cuda":
            raise ConfigError("train.amp=fp16 needs CUDA; use train.amp=bf16 (or none) on CPU")
        return torch.float16
    if amp == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("train.amp=bf16: this GPU has no bfloat16 support; use train.amp=fp16")
        return torch.bfloat16
    raise ConfigError(f"train.amp: unknown value {amp!r}; use none, bf16, fp16 or auto")


def _cpu_has_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
        return False


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_rng_state(loader: Any = None) -> dict[str, Any]:
    """torch (cpu + cuda), numpy, python and ``loader.generator`` RNG states as tensors/ints."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": int(py_state[0]), "state": torch.tensor(py_state[1], dtype=torch.int64)},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    gen = getattr(loader, "generator", None)
    if isinstance(gen, torch.Generator):
        state["loader"] = gen.get_state()
    return state


def set_rng_state(state: Mapping[str, Any], loader: Any = None) -> None:
    """Inverse of :func:`get_rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(x) for x in p["state"].tolist()), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    gen = getattr(loader, "generator", None)
    if "loader" in state and isinstance(gen, torch.Generator):
        gen.set_state(state["loader"].cpu())


def _samplers(loader: Any) -> list[Any]:
    out = []
    for obj in (getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None),
                getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        if obj is not None and all(obj is not o for o in out):
            out.append(obj)
    return out


def _first(x: Any) -> torch.Tensor:
    if isinstance(x, Mapping):
        x = x.get("logits")
    if isinstance(x, (list, tuple)):
        x = x[0] if x else None
    return x  # type: ignore[return-value]


def _fmt(v: float) -> str:
    return f"{v:.4g}"


# ------------------------------------------------------------------------------------- trainer


class Trainer:
    """Train ``cfg.model`` on ``cfg.data``; everything may be injected for tests or embedding.

    Args:
        cfg: the run's :class:`Config`.
        model: a ready model (else ``build_model(cfg.model.name, num_classes, **options)``).
        dataset: a :class:`~hareid.data.ReIDDataset` (else ``build_dataset(cfg.data.name, root)``).
        loaders: ``(train, query, gallery)`` loaders (else ``build_loaders(dataset, ...)``); query
            and gallery may be ``None`` to skip evaluation.
        eval_fn: ``fn(model, query_loader, gallery_loader) -> EvalResult | Mapping`` (default:
            :func:`hareid.evaluate.evaluate` with ``cfg.eval``; sharded across ranks under DDP).
        num_classes: classifier size when it cannot be read from ``dataset``.
        model_spec: ``{"name": ..., **build kwargs}`` stored in checkpoints for an injected model.
        callbacks: ``fn(trainer, info)`` after every iteration; ``info`` holds epoch (0-based),
            batch, iteration, loss, lr.
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
    ) -> None:
        self.cfg = cfg
        self._model_in, self.dataset, self._loaders_in = model, dataset, loaders
        self._eval_fn = eval_fn
        self._num_classes = num_classes
        self._model_spec = dict(model_spec) if model_spec is not None else None
        self.callbacks = list(callbacks)
        self.run_dir = Path(cfg.output_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.epoch = 0  # completed epochs
        self.iteration = 0  # optimiser steps taken
        self.best: dict[str, Any] = {}
        self.last_eval: dict[str, Any] | None = None
        self._stop_signal: int | None = None
        self._stop_requested = False
        self._ready = False
        self._writer: Any = None
        self.last_result: Any = None  # the latest EvalResult (rank 0), e.g. for ranked-list pictures

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
        set_seed(t.seed + self.dist.rank)
        if t.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

        self._build_data()
        self.loss_fn = ReIDLoss(cfg.loss.ce_weight, cfg.loss.label_smooth, cfg.loss.triplet_weight,
                                cfg.loss.margin)
        self._build_model()
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.iters_per_epoch = len(self.train_loader)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, t.epochs, self.iters_per_epoch)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        if t.tensorboard and self.is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ConfigError("train.tensorboard=true needs `pip install tensorboard`") from e
            self._writer = SummaryWriter(str(self.run_dir / "tb"))
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
            loaders = [*self._loaders_in, None, None]
            self.train_loader, self.query_loader, self.gallery_loader = loaders[:3]
        else:
            if d.batch_size % world or (d.batch_size // world) % d.num_instances:
                raise ConfigError(
                    f"data.batch_size={d.batch_size} must split into {world} per-process batches that "
                    f"are multiples of data.num_instances={d.num_instances}"
                )
            from hareid.data import build_dataset, build_loaders

            if self.dataset is None:
                self.dataset = build_dataset(d.name, d.root, verbose=self.dist.is_main, **d.options)
            self.train_loader, self.query_loader, self.gallery_loader = build_loaders(
                self.dataset, height=d.height, width=d.width, batch_size=d.batch_size // world,
                num_instances=d.num_instances, workers=d.workers, test_batch_size=d.test_batch_size,
                seed=cfg.train.seed, rank=self.dist.rank, world_size=world,
                skip_bad_images=d.skip_bad_images, flip=d.flip, pad=d.pad, erasing=d.erasing,
                color_jitter=d.color_jitter, **d.loader_options,
            )
        if self.train_loader is None:
            raise ConfigError("no training loader: pass loaders=(train, query, gallery) or a dataset")

    def _build_model(self) -> None:
        cfg = self.cfg
        num_classes = self._num_classes
        if num_classes is None and self.dataset is not None:
            num_classes = int(self.dataset.num_train_pids)
        if self._model_in is not None:
            model = self._model_in
            spec = self._model_spec or {"name": cfg.model.name, **cfg.model.build_kwargs()}
            if num_classes is not None:
                spec.setdefault("num_classes", num_classes)
        else:
            if num_classes is None:
                raise ConfigError("num_classes unknown: pass a dataset or num_classes to Trainer")
            from hareid.models import build_model

            kwargs = {**cfg.model.build_kwargs(), "return_features": self.loss_fn.needs_features}
            try:
                model = build_model(cfg.model.name, num_classes=num_classes, **kwargs)
            except (TypeError, ValueError) as e:
                raise ConfigError(f"model.{cfg.model.name}: {str(e).splitlines()[0]}") from e
            spec = {"name": cfg.model.name, "num_classes": num_classes, **kwargs}
        self.model_spec = spec
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

    def state_dict(self, batch_in_epoch: int = 0, progress: Mapping[str, Any] | None = None,
                   rng_epoch_start: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The training checkpoint (docs/architecture.md keys, plus mid-epoch extras)."""
        samplers = [s.state_dict() for s in _samplers(self.train_loader) if hasattr(s, "state_dict")]
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
            "world_size": self.dist.world_size,
        }
        if samplers:
            state["sampler"] = samplers[0]
        if batch_in_epoch:
            state["progress"] = dict(progress or {})
            state["rng_epoch_start"] = rng_epoch_start
        if self.dist.enabled:  # every rank's RNG (collective: all ranks call state_dict)
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
        return save_checkpoint(state, self.ckpt_dir / name)

    def _resume_path(self) -> Path | None:
        spec = self.cfg.train.resume
        if not spec:
            return None
        if spec == "auto":
            for name in ("interrupt.pt", "last.pt"):
                if (self.ckpt_dir / name).is_file():
                    return self.ckpt_dir / name
            return None
        return Path(spec)

    def load(self, path: str | os.PathLike) -> dict[str, Any]:
        """Restore a training checkpoint; returns it (RNG is restored by :meth:`fit`)."""
        ckpt = load_checkpoint(path, map_location=self.device)
        missing = [k for k in ("state_dict", "optimizer", "scheduler", "epoch", "iteration", "rng") if k not in ckpt]
        if missing:
            raise CheckpointError(f"{path}: not a training checkpoint (missing {missing}); pass last.pt")
        try:
            self.model.load_state_dict(ckpt["state_dict"])
        except RuntimeError as e:
            raise CheckpointError(f"{path}: weights do not fit model {self.cfg.model.name!r} "
                                  f"({str(e).splitlines()[0]})") from e
        if int(ckpt.get("world_size", 1)) != self.dist.world_size and int(ckpt.get("batch_in_epoch", 0)):
            raise CheckpointError(f"{path}: a mid-epoch checkpoint from {ckpt.get('world_size')} processes "
                                  f"cannot resume on {self.dist.world_size}; use checkpoints/last.pt")
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.iteration = int(ckpt["epoch"]), int(ckpt["iteration"])
        metrics = ckpt.get("metrics") or {}
        self.best = dict(metrics.get("best") or {})
        self.last_eval = dict(metrics.get("last_eval") or {}) or None
        for s in _samplers(self.train_loader):
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
        e = self.cfg.eval
        model = self.model
        was_training = model.training
        model.eval()
        try:
            if self._eval_fn is not None:
                res = self._eval_fn(model, self.query_loader, self.gallery_loader) if self.is_main else None
                out = self._to_metrics(res) if res is not None else None
                self.last_result = res
            elif self.dist.enabled:
                out = self._evaluate_sharded()
            else:
                from hareid.evaluate import evaluate

                res = evaluate(model, self.query_loader, self.gallery_loader, metric=e.metric, flip=e.flip,
                               rerank=e.rerank, max_rank=e.max_rank, autocast_dtype=self._eval_dtype(),
                               progress=self.cfg.train.progress)
                self.last_result = res
                out = self._to_metrics(res)
        finally:
            model.train(was_training)
        return hdist.broadcast_object(out)

    def _eval_dtype(self) -> torch.dtype | None:
        return self.amp_dtype if self.cfg.eval.amp else None

    def _evaluate_sharded(self) -> dict[str, Any] | None:
        """Each rank embeds its strided shard; rank 0 gathers and scores (the others get ``None``)."""
        from hareid.evaluate import EvalResult, extract_features
        from hareid.evaluate.distance import pairwise_distance
        from hareid.evaluate.metrics import evaluate_rank

        e = self.cfg.eval
        sets = []
        for name, loader in (("query", self.query_loader), ("gallery", self.gallery_loader)):
            fs = extract_features(self.model, hdist.shard_loader(loader), e.flip, self._eval_dtype(),
                                  progress=self.cfg.train.progress and self.is_main, desc=name)
            sets.append(hdist.gather_feature_set(fs, total=len(loader.dataset)))
        if not self.is_main:
            return None
        qs, gs = sets
        distmat = pairwise_distance(qs.features, gs.features, e.metric)
        if e.rerank:
            from hareid.evaluate.rerank import re_ranking

            distmat = re_ranking(distmat, pairwise_distance(qs.features, qs.features, e.metric),
                                 pairwise_distance(gs.features, gs.features, e.metric))
        rank = evaluate_rank(distmat, qs.pids, gs.pids, qs.camids, gs.camids, max_rank=e.max_rank)
        res = EvalResult(rank, qs, gs, distmat, e.metric, e.flip, e.rerank)
        self.last_result = res
        return self._to_metrics(res)

    @staticmethod
    def _to_metrics(res: Any) -> dict[str, Any]:
        d = res.to_dict() if hasattr(res, "to_dict") else dict(res)
        return {k: (float(v) if isinstance(v, (np.floating, np.integer)) else v) for k, v in d.items()}

    # ---------------------------------------------------------------------------------- logs

    def _log(self, record: Mapping[str, Any]) -> None:
        if not self.is_main:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(dict(record)) + "\n")

    def _trim_metrics(self, upto_epoch: int) -> None:
        """On resume, drop records of epochs after the checkpoint (they will be rewritten)."""
        path = self.run_dir / "metrics.jsonl"
        if not self.is_main or not path.is_file():
            return
        keep = []
        for line in path.read_text().splitlines():
            try:
                if int(json.loads(line).get("epoch", 0)) <= upto_epoch:
                    keep.append(line)
            except (ValueError, AttributeError):
                continue
        path.write_text("".join(x + "\n" for x in keep))

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

    def _train_epoch(self, epoch: int, skip: int = 0, progress: Mapping[str, Any] | None = None,
                     rng_after_skip: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """One epoch (0-based ``epoch``); returns its stats, with ``stopped_at`` if interrupted."""
        t = self.cfg.train
        for s in _samplers(self.train_loader):
            if hasattr(s, "set_epoch"):
                s.set_epoch(epoch)
        rng_start = get_rng_state(self.train_loader)
        self.train_model.train()
        stats = {"loss_sum": 0.0, "correct": 0, "seen": 0, "time": 0.0, **dict(progress or {})}
        n_batches = self.iters_per_epoch
        bar = tqdm(total=n_batches, initial=skip, desc=f"epoch {epoch + 1}/{t.epochs}", leave=True,
                   disable=not (t.progress and self.is_main), dynamic_ncols=True, file=sys.stderr)
        it = iter(self.train_loader)
        for _ in range(skip):  # replay the data order (and augmentation RNG) of the trained batches
            next(it)
        if rng_after_skip is not None:
            set_rng_state(rng_after_skip, self.train_loader)
        tic = time.perf_counter()
        stopped_at: int | None = None
        params = [p for p in self.model.parameters() if p.requires_grad]
        try:
            for b in range(skip, n_batches):
                try:
                    batch = next(it)
                except StopIteration:
                    break
                images, pids = batch[0], batch[1]
                images = images.to(self.device, non_blocking=True)
                if t.channels_last and images.dim() == 4:
                    images = images.contiguous(memory_format=torch.channels_last)
                targets = torch.as_tensor(pids).to(self.device, non_blocking=True)
                with self._autocast():
                    outputs = self.train_model(images)
                loss, _parts = self.loss_fn(outputs, targets)
                logits = _first(outputs)
                correct = int((logits.argmax(1) == targets).sum()) if logits is not None else 0
                loss_val, stop = float(loss.detach()), self._stop_requested
                if self.dist.enabled:  # one all-reduce: every rank agrees on NaN and on stopping
                    flags = torch.tensor([loss_val, float(stop)], dtype=torch.float64,
                                         device=self.device if self.dist.backend == "nccl" else "cpu")
                    torch.distributed.all_reduce(flags)
                    loss_val, stop = float(flags[0]) / self.dist.world_size, bool(flags[1] > 0)
                    self._stop_requested = self._stop_requested or stop
                self._check_finite(loss_val, epoch, b)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                if t.grad_clip > 0:
                    self.scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.scheduler.step()
                self.iteration += 1
                bs = int(targets.shape[0])
                stats["loss_sum"] += loss_val * bs
                stats["correct"] += correct
                stats["seen"] += bs
                elapsed = stats["time"] + time.perf_counter() - tic
                lr = current_lr(self.optimizer)
                bar.update(1)
                bar.set_postfix(loss=_fmt(stats["loss_sum"] / stats["seen"]),
                                acc=f"{stats['correct'] / stats['seen']:.3f}", lr=f"{lr:.2e}",
                                img_s=f"{stats['seen'] * self.dist.world_size / max(elapsed, 1e-9):.0f}",
                                refresh=False)
                if self._writer is not None:
                    self._writer.add_scalar("train/loss", loss_val, self.iteration)
                    self._writer.add_scalar("train/lr", lr, self.iteration)
                info = {"epoch": epoch, "batch": b, "iteration": self.iteration, "loss": loss_val, "lr": lr}
                for cb in self.callbacks:
                    cb(self, info)
                if not self.dist.enabled:  # under DDP the all-reduced flag above decides (same on all ranks)
                    stop = self._stop_requested
                if stop and b + 1 < n_batches:
                    stopped_at = b + 1
                    break
        finally:
            bar.close()
        stats["time"] += time.perf_counter() - tic
        seen = max(stats["seen"], 1)
        out = {
            "epoch": epoch + 1,
            "iteration": self.iteration,
            "loss": stats["loss_sum"] / seen,
            "acc": stats["correct"] / seen,
            "lr": current_lr(self.optimizer),
            "images_per_s": stats["seen"] * self.dist.world_size / max(stats["time"], 1e-9),
        }
        if stopped_at is not None:
            out["stopped_at"] = stopped_at
            out["_progress"] = stats
            out["_rng_epoch_start"] = rng_start
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

    def _is_better(self, metrics: Mapping[str, Any]) -> bool:
        key = self.cfg.train.best_metric
        if key not in metrics:
            return False
        return not self.best or float(metrics[key]) > float(self.best.get("value", -math.inf))

    def fit(self) -> dict[str, Any]:
        """Train for ``cfg.train.epochs`` epochs (resuming if asked); returns the final metrics.

        Under torchrun, a process group that ``fit`` itself created is destroyed when it returns;
        call :func:`hareid.distributed.init_distributed` first to keep the group for later work.

        The result holds the last epoch's train stats, the final evaluation (``rank1``, ``mAP``,
        ...), ``best`` ({"metric", "value", "epoch"}), ``run_dir`` and ``interrupted``.
        """
        self.setup()
        cfg, t = self.cfg, self.cfg.train
        if self.is_main:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")
        resume = self._resume_path()
        skip, progress, rng_after_skip = 0, None, None
        if resume is not None:
            ckpt = self.load(resume)
            skip = int(ckpt.get("batch_in_epoch", 0))
            if skip:
                progress = ckpt.get("progress")
                rng_after_skip = self._rng_from(ckpt, "rng")
                set_rng_state(self._rng_from(ckpt, "rng_epoch_start"), self.train_loader)
            else:
                set_rng_state(self._rng_from(ckpt, "rng"), self.train_loader)
            self._trim_metrics(self.epoch)
            if self.is_main:
                print(f"hareid: resumed from {resume} (epoch {self.epoch}, iteration {self.iteration}"
                      + (f", batch {skip} of epoch {self.epoch + 1})" if skip else ")"), file=sys.stderr)
        elif self.is_main:
            (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
        hdist.barrier()

        old_handlers = self._install_signals()
        train_stats: dict[str, Any] = {}
        interrupted = False
        evaluated_at = -1
        try:
            while self.epoch < t.epochs:
                epoch = self.epoch
                train_stats = self._train_epoch(epoch, skip, progress, rng_after_skip)
                skip, progress, rng_after_skip = 0, None, None
                if "stopped_at" in train_stats:
                    interrupted = True
                    state = self.state_dict(train_stats["stopped_at"], train_stats.pop("_progress"),
                                            train_stats.pop("_rng_epoch_start"))
                    if self.is_main:
                        path = self._save("interrupt.pt", state)
                        why = signal.Signals(self._stop_signal).name if self._stop_signal else "stop request"
                        print(f"hareid: {why}: saved {path} (epoch {epoch + 1}, batch "
                              f"{train_stats['stopped_at']}/{self.iters_per_epoch}); resume with "
                              f"train.resume=auto", file=sys.stderr)
                    break
                self.epoch = epoch + 1
                self._log(train_stats)
                if self._writer is not None:
                    self._writer.add_scalar("train/acc", train_stats["acc"], self.epoch)
                    self._writer.add_scalar("train/images_per_s", train_stats["images_per_s"], self.epoch)
                due = t.eval_every > 0 and self.epoch % t.eval_every == 0
                if due or self.epoch == t.epochs:
                    self._run_eval()
                    evaluated_at = self.epoch
                state = self.state_dict()
                if self.is_main:
                    self._save("last.pt", state)
                    if self.last_eval is not None and self.best.get("epoch") == self.epoch:
                        self._save("best.pt", state)
                    (self.ckpt_dir / "interrupt.pt").unlink(missing_ok=True)
                if self._agree_stop():
                    interrupted = True
                    if self.is_main:
                        print(f"hareid: stopped after epoch {self.epoch}; saved {self.ckpt_dir / 'last.pt'}; "
                              "resume with train.resume=auto", file=sys.stderr)
                    break
            if not interrupted and evaluated_at != self.epoch and self.epoch == t.epochs and self.last_eval is None:
                self._run_eval()  # resumed after the final epoch: still produce eval.json
        finally:
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
            if self._writer is not None:
                self._writer.flush()
        if not interrupted and self.is_main and self.last_eval:
            with open(self.run_dir / "eval.json", "w") as f:
                json.dump({**self.last_eval, "epoch": self.epoch}, f, indent=1)
        if self._owns_group:  # a torchrun script that let the Trainer join the group: leave it cleanly
            hdist.cleanup_distributed()
            self._owns_group = False
        result = {k: v for k, v in train_stats.items() if not k.startswith("_")}
        result.update({k: v for k, v in (self.last_eval or {}).items() if k != "cmc"})
        result.update(best=dict(self.best), run_dir=str(self.run_dir), interrupted=interrupted,
                      epoch=self.epoch, iteration=self.iteration)
        return result

    def _run_eval(self) -> None:
        metrics = self.evaluate()
        if metrics is None:
            return
        self.last_eval = metrics
        rec = {"epoch": self.epoch, **{k: metrics[k] for k in ("rank1", "rank5", "mAP", "mINP") if k in metrics}}
        self._log(rec)
        if self._writer is not None:
            for k, v in rec.items():
                if k != "epoch":
                    self._writer.add_scalar(f"eval/{k}", v, self.epoch)
        if self.is_main:
            tqdm.write(f"epoch {self.epoch}: " + " ".join(f"{k}={_fmt(float(v))}" for k, v in rec.items()
                                                         if k != "epoch"), file=sys.stderr)
        if self._is_better(metrics):
            key = self.cfg.train.best_metric
            self.best = {"metric": key, "value": float(metrics[key]), "epoch": self.epoch}
