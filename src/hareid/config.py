"""Typed training configuration: dataclasses, YAML recipes and dotted command-line overrides.

``load_config("hacnn_synthetic", ["train.epochs=3", "optim.milestones=[20,40]"])`` reads the recipe
shipped in ``hareid/configs/`` (or any YAML path), applies the overrides, checks every key and value
against the dataclass types below, and returns a :class:`Config`. Unknown keys and values of the
wrong type raise :class:`~hareid.errors.ConfigError` with one line naming the key, the expected type
and, for a misspelt key, the nearest valid name.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from hareid.errors import ConfigError

__all__ = [
    "Config",
    "DataConfig",
    "EvalConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "list_recipes",
    "load_config",
    "save_config",
]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass
class DataConfig:
    """Dataset, input size, sampling and augmentation."""

    name: str = "synthetic"
    root: str = "data/synthetic"
    height: int | None = None  # None: the model's own input size (its registry entry)
    width: int | None = None
    batch_size: int = 32  # global batch: split evenly over DDP processes
    num_instances: int = 4  # K images per identity in a P x K batch
    workers: int = 2
    test_batch_size: int = 128
    skip_bad_images: bool = False
    flip: float = 0.5  # horizontal-flip probability
    pad: int = 10  # zero padding before a random crop back to height x width (0 = no crop)
    erasing: float = 0.5  # random-erasing probability
    color_jitter: float = 0.0  # brightness/contrast/saturation strength (0 = off)
    options: dict[str, Any] = field(default_factory=dict)  # extra build_dataset kwargs
    loader_options: dict[str, Any] = field(default_factory=dict)  # extra build_loaders kwargs


@dataclass
class ModelConfig:
    """A registered model, where its weights start, and its options.

    The accepted options, their types and defaults come from the model's registry entry
    (:func:`hareid.models.model_entry`), so they are written once, in the model's signature.
    ``model.<option>=value`` on the command line and ``model: {<option>: value}`` in YAML are
    shorthands for ``model.options.<option>``; an option left out keeps the model's default.
    """

    name: str = "hacnn"
    init: str | None = None  # start from these weights: a hareid or torchreid checkpoint, a torchvision .pth
    options: dict[str, Any] = field(default_factory=dict)  # build_model keyword arguments


@dataclass
class LossConfig:
    """Loss weights: label-smoothed cross-entropy per branch, optional batch-hard triplet, optional
    attention loss that teaches the soft masks where the person is (needs person masks: the
    synthetic sets, tracklets; see :class:`hareid.engine.losses.AttentionMaskLoss`)."""

    ce_weight: float = 1.0
    label_smooth: float = 0.1
    triplet_weight: float = 0.0
    margin: float = 0.3
    attn_weight: float = 0.0  # 0 = off; on a dataset without masks the term is left out (said once)
    attn_form: Literal["kl", "mass"] = "kl"  # KL(person || attention) or -log(attention mass on the person)


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule (epochs; the schedule is stepped every iteration)."""

    name: Literal["adam", "amsgrad", "sgd"] = "adam"
    lr: float = 3e-4
    weight_decay: float = 5e-4
    momentum: float = 0.9  # sgd
    nesterov: bool = False  # sgd
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adam / amsgrad
    scheduler: Literal["none", "step", "multistep", "cosine"] = "multistep"
    step_size: int = 40  # step: decay every step_size epochs
    milestones: list[int] = field(default_factory=lambda: [40, 80])  # multistep: absolute epochs
    gamma: float = 0.1
    min_lr: float = 0.0  # cosine floor
    warmup_epochs: int = 0  # linear warmup, per iteration, from lr * warmup_factor
    warmup_factor: float = 0.1
    backbone_lr_mult: float = 1.0  # lr x this for the stem and stages (pretrained backbones: < 1)


@dataclass
class TrainConfig:
    """Training loop, precision, checkpoints and logging."""

    epochs: int = 60
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: Literal["none", "bf16", "fp16", "auto"] = "auto"
    channels_last: bool = False
    compile: bool = False
    grad_clip: float = 0.0  # max global grad norm; 0 disables
    seed: int = 0
    deterministic: bool = False
    eval_every: int = 10  # epochs; 0 evaluates only at the end, -1 never
    best_metric: Literal["mAP", "rank1"] = "mAP"
    progress: bool = True  # tqdm bar per epoch (rank 0 only)
    resume: str | None = None  # checkpoint path, or "auto" = RUN/checkpoints/last.pt if present
    tensorboard: bool = False
    sync_bn: bool = False
    find_unused_parameters: bool = False


@dataclass
class EvalConfig:
    """Evaluation protocol options."""

    metric: Literal["euclidean", "cosine"] = "euclidean"
    protocol: Literal["market1501", "market1501_official", "cuhk03"] = "market1501"
    flip: bool = False
    rerank: bool = False
    max_rank: int = 50
    amp: Literal["none", "bf16", "fp16", "auto"] = "none"  # embedding precision, as train.amp (bf16 ~1e-3 off)


@dataclass
class Config:
    """The whole run: every section plus the run folder."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output_dir: str = "runs/hacnn"

    def to_dict(self) -> dict[str, Any]:
        """A plain, YAML/JSON-able dict (deep copy; tuples become lists)."""
        return dataclasses.asdict(self, dict_factory=lambda kv: {k: _plain(v) for k, v in kv})

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> Config:
        """Build and validate a Config from a (possibly partial) nested dict."""
        cfg = cls()
        _merge(cfg, data, prefix="", source=source)
        _check(cfg)
        return cfg


# ----------------------------------------------------------------------------------------- types


def _plain(v: Any) -> Any:
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        (inner,) = get_args(tp) or (Any,)
        return f"list[{_type_name(inner)}]"
    if origin is tuple:
        return f"tuple[{', '.join(_type_name(a) for a in get_args(tp))}]"
    if origin is dict:
        return "mapping"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` (from YAML or a command-line string) to ``tp`` or raise ConfigError."""

    def bad() -> ConfigError:
        return ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")

    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None or (isinstance(value, str) and value.strip().lower() in ("null", "none", "~")):
            if type(None) in args:
                return None
            raise bad()
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError:
                pass
        raise bad()
    if origin is Literal:
        choices = get_args(tp)
        if value in choices:
            return value
        if isinstance(value, str):
            close = difflib.get_close_matches(value, [str(c) for c in choices], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{key}: expected one of {_type_name(tp)}, got {value!r}{hint}")
        raise bad()
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise bad()
    if tp is int:
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise bad() from None
        raise bad()
    if tp is float:
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
            try:
                return float(value.strip())
            except ValueError:
                raise bad() from None
        raise bad()
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad()
    if origin is list:
        (inner,) = get_args(tp) or (Any,)
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                value = _yaml_value(text, key)
            else:
                value = [v for v in (s.strip() for s in text.split(",")) if v]
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise bad()
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:  # e.g. HACNN's channels: tuple[int, int, int]
        args = get_args(tp)
        if isinstance(value, str):
            value = _yaml_value(value if value.strip().startswith("[") else f"[{value}]", key)
        if not isinstance(value, (list, tuple)):
            raise bad()
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise ConfigError(f"{key}: expected {len(args)} values, got {list(value)}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args or [Any] * len(value))))
    if origin is dict:
        if isinstance(value, str):
            value = _yaml_value(value, key)
        if not isinstance(value, dict):
            raise bad()
        return dict(value)
    raise bad()  # pragma: no cover - a field type this module does not handle


def _yaml_value(text: str, key: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0]
        raise ConfigError(f"{key}: cannot parse {text!r} ({first})") from None


# names other tools use for the same setting (difflib cannot see that "learning_rate" is "lr")
_ALIASES = {
    "learning_rate": "lr", "base_lr": "lr", "optimizer": "optim", "optim_name": "name",
    "max_epoch": "epochs", "max_epochs": "epochs", "num_epochs": "epochs", "lr_scheduler": "scheduler",
    "stepsize": "step_size", "batch": "batch_size", "train_batch_size": "batch_size",
    "num_workers": "workers", "arch": "name", "label_smoothing": "label_smooth", "eval_freq": "eval_every",
    "save_dir": "output_dir", "dataset": "data", "loss_weights": "ce_weight",
}


def _unknown(key: str, valid: list[str], prefix: str, source: str) -> ConfigError:
    alias = _ALIASES.get(key.lower())
    close = [alias] if alias in valid else difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(valid)}"
    return ConfigError(f"{source}: unknown config key '{prefix}{key}'{hint}")


def _merge(obj: Any, data: Any, prefix: str, source: str) -> None:
    """Set the fields of dataclass ``obj`` from mapping ``data`` with validation."""
    if not isinstance(data, dict):
        where = prefix.rstrip(".") or "top level"
        raise ConfigError(f"{source}: '{where}' must be a mapping, got {type(data).__name__}")
    hints = _hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in data.items():
        key = str(key)
        if isinstance(obj, ModelConfig) and key not in names:  # shorthand for model.options.<key>
            if value is not None:  # null = the model's default (configs of hareid 0.1 list them)
                obj.options[key] = value
            continue
        if key not in names:
            raise _unknown(key, names, prefix, source)
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _merge(current, value if value is not None else {}, f"{prefix}{key}.", source)
        else:
            setattr(obj, key, _coerce(value, hints[key], f"{prefix}{key}"))


def _set_dotted(cfg: Config, dotted: str, raw: str, source: str) -> None:
    obj: Any = cfg
    parts = dotted.split(".")
    prefix = ""
    for i, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(obj)]
        if isinstance(obj, ModelConfig) and part not in names:  # model.num_regions=2 -> an option
            obj.options[".".join(parts[i:])] = _yaml_value(raw, dotted)
            return
        if part not in names:
            raise _unknown(part, names, prefix, source)
        current = getattr(obj, part)
        last = i == len(parts) - 1
        if dataclasses.is_dataclass(current):
            if last:
                raise ConfigError(f"{source}: '{dotted}' is a section; set one of its keys, e.g. {dotted}.{dataclasses.fields(current)[0].name}=...")
            obj, prefix = current, f"{prefix}{part}."
            continue
        tp = _hints(type(obj))[part]
        if get_origin(tp) is dict and not last:  # model.options.foo=1 -> one entry of a free mapping
            sub = dict(current)
            sub_key = ".".join(parts[i + 1 :])
            sub[sub_key] = _yaml_value(raw, dotted)
            setattr(obj, part, sub)
            return
        if not last:
            raise ConfigError(f"{source}: '{prefix}{part}' is a value, not a section ('{dotted}')")
        setattr(obj, part, _coerce(raw, tp, dotted))


def _option_choices() -> dict[str, tuple[str, ...]]:
    """Model options that take one of a few names (checked when the config is read)."""
    from hareid.models.layers.attention import REGION_SAMPLING_MODES, SOFT_MASKS

    return {"soft_mask": SOFT_MASKS, "region_sampling": (*REGION_SAMPLING_MODES, "peer")}


def _check_model(cfg: Config) -> None:
    """Check ``model.options`` against the model's registry entry (names, types) and fill the
    input size the model was designed for where ``data.height`` / ``data.width`` are unset."""
    from hareid.models import model_entry

    m = cfg.model
    try:
        entry = model_entry(m.name)
    except ValueError as e:
        raise ConfigError(f"model.name: {e}") from None
    options = {}
    for key, value in m.options.items():
        if key not in entry.options:
            valid = [f"model.{o}" for o in entry.options]
            close = difflib.get_close_matches(f"model.{key}", valid, n=1, cutoff=0.5)
            hint = f"did you mean '{close[0]}'?" if close else f"options: {', '.join(valid)}"
            raise ConfigError(f"unknown option 'model.{key}' for model {m.name!r}; {hint}")
        options[key] = _coerce(value, entry.types.get(key, Any), f"model.{key}")
        choices = _option_choices().get(key)
        if choices is not None and options[key] not in choices:
            raise ConfigError(f"model.{key}: must be one of {', '.join(map(str, choices))}, got {options[key]!r}")
    m.options = options
    if cfg.data.height is None:
        cfg.data.height = entry.input_size[0]
    if cfg.data.width is None:
        cfg.data.width = entry.input_size[1]


#: Largest data.height / data.width: a 4096-pixel crop side is already 16x a person crop.
MAX_SIDE = 4096
#: ``auto``, ``cpu``, ``mps``, ``cuda`` or ``cuda:N``
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def _in_range(key: str, v: float, low: float | None = None, high: float | None = None, *,
              low_open: bool = False, high_open: bool = False, what: str = "") -> None:
    """One NaN-aware bound check: NaN, inf and values outside the interval give one line naming
    the key and the bound (``what`` describes the value, e.g. "the decay factor")."""
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if ok and low is not None:
        ok = v > low if low_open else v >= low
    if ok and high is not None:
        ok = v < high if high_open else v <= high
    if not ok:
        def num(x: float) -> str:
            return str(int(x)) if float(x).is_integer() else f"{x:g}"

        if high is None:
            bound = f"{'>' if low_open else '>='} {num(low)}"
        else:
            bound = f"in {'(' if low_open else '['}{num(low)}, {num(high)}{')' if high_open else ']'}"
        raise ConfigError(f"{key}: {what + ' ' if what else ''}must be {bound}, got {v!r}")


def _check(cfg: Config) -> None:
    """Cross-field checks that the types alone cannot express: every bound in one place, NaN-aware."""
    _check_model(cfg)
    d, o, t, lo, e = cfg.data, cfg.optim, cfg.train, cfg.loss, cfg.eval
    for key, v in {"data.height": d.height, "data.width": d.width}.items():
        _in_range(key, v, 1, MAX_SIDE)
    positive = {
        "data.batch_size": d.batch_size, "data.num_instances": d.num_instances,
        "data.test_batch_size": d.test_batch_size, "train.epochs": t.epochs, "optim.step_size": o.step_size,
        "eval.max_rank": e.max_rank,
    }
    for key, v in positive.items():
        if v <= 0:
            raise ConfigError(f"{key}: must be > 0, got {v}")
    _in_range("optim.lr", o.lr, 0, None, low_open=True)
    _in_range("optim.gamma", o.gamma, 0, 1, low_open=True, what="the decay factor")
    if t.eval_every < -1:
        raise ConfigError(f"train.eval_every: epochs between evaluations, 0 (only at the end) or -1 (never), "
                          f"got {t.eval_every}")
    nonneg = {"data.workers": d.workers, "optim.warmup_epochs": o.warmup_epochs, "train.grad_clip": t.grad_clip,
              "optim.weight_decay": o.weight_decay, "optim.min_lr": o.min_lr, "loss.ce_weight": lo.ce_weight,
              "loss.triplet_weight": lo.triplet_weight, "loss.margin": lo.margin,
              "data.color_jitter": d.color_jitter, "loss.attn_weight": lo.attn_weight}
    for key, v in nonneg.items():
        _in_range(key, v, 0)
    for key, v in {"data.flip": d.flip, "data.erasing": d.erasing}.items():
        _in_range(key, v, 0, 1, what="a probability")
    _in_range("data.pad", d.pad, 0, max(d.height, d.width))  # more padding than image allocates for nothing
    _in_range("optim.momentum", o.momentum, 0, 1, high_open=True)
    _in_range("loss.label_smooth", lo.label_smooth, 0, 1, high_open=True)
    _in_range("train.seed", t.seed, 0, 2**32 - 1)
    if not _DEVICE.match(str(t.device)):
        raise ConfigError(f"train.device: must be auto, cpu, mps, cuda or cuda:N, got {t.device!r}")
    if lo.ce_weight == 0 and lo.triplet_weight == 0:
        raise ConfigError("loss: ce_weight and triplet_weight are both 0; set one of them > 0")
    if d.batch_size % d.num_instances:
        raise ConfigError(
            f"data.batch_size={d.batch_size} is not a multiple of data.num_instances={d.num_instances}"
        )
    if len(o.betas) != 2:
        raise ConfigError(f"optim.betas: expected two numbers, got {o.betas}")
    for i, b in enumerate(o.betas):
        _in_range(f"optim.betas[{i}]", b, 0, 1, high_open=True)
    if o.milestones != sorted(o.milestones) or any(m < 1 for m in o.milestones):
        raise ConfigError(f"optim.milestones: epochs >= 1 in increasing order, got {o.milestones}")
    if o.min_lr > o.lr:
        raise ConfigError(f"optim.min_lr={o.min_lr} must not exceed optim.lr={o.lr}")
    if o.warmup_epochs >= t.epochs and o.warmup_epochs > 0:
        raise ConfigError(f"optim.warmup_epochs={o.warmup_epochs} must be < train.epochs={t.epochs}")
    _in_range("optim.warmup_factor", o.warmup_factor, 0, 1, low_open=True)
    _in_range("optim.backbone_lr_mult", o.backbone_lr_mult, 0)  # 1 = same lr as the new layers


# ------------------------------------------------------------------------------------ public API


def list_recipes() -> list[str]:
    """Names of the recipes shipped with hareid (``hacnn_market1501``, ``hacnn_synthetic``, ...)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def _resolve(path_or_name: str) -> Path:
    p = Path(path_or_name).expanduser()
    if p.is_file():
        return p
    shipped = CONFIG_DIR / f"{Path(path_or_name).stem}.yaml"
    if not p.suffix and shipped.is_file():
        return shipped
    if p.suffix not in ("", ".yaml", ".yml"):
        raise ConfigError(f"{path_or_name}: config must be a .yaml file or a recipe name")
    names = list_recipes()
    close = difflib.get_close_matches(Path(path_or_name).stem, names, n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"recipes: {', '.join(names)}"
    raise ConfigError(f"{path_or_name}: no such config file or shipped recipe; {hint}")


def load_config(path_or_name: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a YAML file or shipped recipe (``None`` = defaults), then apply ``key.sub=value`` overrides."""
    cfg = Config()
    if path_or_name is not None:
        path = _resolve(str(path_or_name))
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
        except yaml.YAMLError as e:
            first = str(e).strip().splitlines()[0]
            raise ConfigError(f"{path}: not valid YAML ({first})") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a text file; pass a YAML config or a recipe name") from None
        if not data:
            raise ConfigError(f"{path}: the config is empty; start from a recipe (e.g. --config "
                              "hacnn_synthetic) and override keys, or write its data and model sections")
        _merge(cfg, data, prefix="", source=str(path))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. train.epochs=3")
        key, raw = item.split("=", 1)
        _set_dotted(cfg, key.strip(), raw.strip(), source=f"override {item!r}")
    _check(cfg)
    return cfg


#: First line of the config.yaml a run writes: what tells a run's own file from a user's config.
RUN_CONFIG_MARK = "# hareid run config (the resolved config of this run; written by hareid)"


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write ``cfg`` as YAML (keys in dataclass order) under :data:`RUN_CONFIG_MARK`; returns the path."""
    from hareid.fileio import atomic_write_text

    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=None)
    return atomic_write_text(path, f"{RUN_CONFIG_MARK}\n{text}")
