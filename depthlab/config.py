"""The typed run configuration: one ``RunConfig`` tree, composed from defaults, a YAML file and
dotted ``--set key=value`` overrides, validated field by field and saved into the run directory.

Fields left as ``None`` are filled at run time from the recipe (``train.*``) or the dataset
(``model.num_classes``, ``model.in_channels``); the *resolved* config is what gets written.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

import yaml

from depthlab.data import AUGMENTS, DATASETS, check_data_section
from depthlab.methods import METHODS, all_options, enabled_methods
from depthlab.models import FAMILIES, MODELS
from depthlab.models.spec import model_name_hint, model_options
from depthlab.recipes import RECIPES
from depthlab.registry import Option


class ConfigError(ValueError):
    """A bad config field; the message names the field (``train.lr``) and what is valid."""


@dataclass
class _ModelFields:
    name: str = "resnet20"                 # a preset or family name (``depthlab models``)
    depth: Optional[int] = None            # None: the preset's depth
    width: Optional[int] = None            # base channels; None: the preset's
    shortcut: Optional[str] = None         # "A" (zero-pad identity) | "B" (projection)
    init: Optional[str] = None             # an init scheme name; None: kaiming
    zero_init_residual: bool = False
    num_classes: Optional[int] = None      # None: from the dataset
    in_channels: Optional[int] = None      # None: from the dataset


def _option_fields(options: Dict[str, Option], optional: bool):
    """Dataclass fields for declared options; ``optional``: every field defaults to None (a model
    option left unset takes its family's default), else to the option's own default."""
    out = []
    for key, o in options.items():
        default = None if optional else o.default
        hint = Optional[o.type] if optional or o.default is None else o.type
        out.append((key, hint, field(default=default)))
    return out


# model.<option> for every family option (``register_family(options=...)``); None: the family's
# default; a family that lacks an option rejects it
ModelConfig = dataclasses.make_dataclass("ModelConfig", _option_fields(model_options(), optional=True),
                                         bases=(_ModelFields,))
ModelConfig.__module__ = __name__
ModelConfig.__doc__ = "The ``model`` section: common fields plus every model family's options."


@dataclass
class DataConfig:
    name: str = "digits"
    data_dir: Optional[str] = None         # None: $DEPTHLAB_DATA_DIR or the user cache dir
    seed: int = 0                          # seeds the fixed train/test (and val) split
    val_fraction: float = 0.0              # held out from train, never from test
    augment: Optional[str] = None          # "none" | "crop" | "crop-flip"; None: the dataset's default
    crop_padding: Optional[int] = None
    download: bool = True
    path: Optional[str] = None             # imagefolder, cifar10/100: a folder or .tar/.tar.gz/.tgz/.zip of
                                           # train/<class>/ and test/<class>/ images (saved absolute)
    resize: Optional[int] = None           # imagefolder: resize every image to resize x resize
    train_subset: Optional[int] = None     # train on a stratified, seeded subset of this many images
    test_subset: Optional[int] = None      # evaluate on a stratified, seeded subset of this many test images


COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")   # train.compile (torch.compile modes)
OPTIMIZER_IMPLS = ("auto", "foreach", "fused", "for-loop")             # train.optimizer_impl


@dataclass
class TrainConfig:
    recipe: str = "quick"                  # "quick" | "he2015" (``depthlab train --help``)
    epochs: Optional[int] = None           # None fields come from the recipe
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    momentum: Optional[float] = None
    weight_decay: Optional[float] = None
    nesterov: Optional[bool] = None
    warmup_iters: Optional[int] = None     # he2015: iterations at warmup_lr for depth >= 110
    warmup_lr: Optional[float] = None
    seed: int = 0                          # model init; data order/augmentation streams derive from it
    device: str = "auto"                   # "auto" (cuda, mps, cpu) | "cpu" | "cuda" | "cuda:N" | "mps"
    threads: Optional[int] = None          # CPU intra-op threads; None / "auto": the cores free now
    # the fast path (depthlab/training/fastpath.py): how a step runs, not what it computes;
    # None / "auto": the default measured fastest on that device (docs/performance.md)
    bf16: Optional[bool] = None            # bf16 autocast (weights and optimizer stay float32)
    channels_last: Optional[bool] = None   # NHWC memory format for the model and its inputs
    flush_denormal: Optional[bool] = None  # CPU: float32 denormals (< 1.2e-38) read and written as 0 while training
    optimizer_impl: str = "auto"           # "auto" | "foreach" | "fused" | "for-loop"
    compile: str = "off"                   # torch.compile mode: "off" | "default" | "reduce-overhead"
                                           # (CUDA graphs) | "max-autotune"
    checkpoint_segments: int = 0           # activation checkpointing: 0 off, N segments, -1 sqrt(blocks)
    deterministic: bool = False            # torch.use_deterministic_algorithms (bit-exact resume on CUDA too)
    sync_bn: bool = False                  # multi-process (torchrun): SyncBatchNorm across ranks
    check_every: int = 32                  # steps between checks for a non-finite loss (one sync each)
    eval_every: int = 1                    # epochs between test evaluations (the last is always evaluated)
    keep_last: int = 2                     # checkpoints kept (atomic writes)
    keep_best: bool = False                # keep checkpoints/best.pt by validation accuracy


# methods.<option> for every training method's options (``depthlab.methods``); all off by default
MethodConfig = dataclasses.make_dataclass("MethodConfig", _option_fields(all_options(), optional=False))
MethodConfig.__module__ = __name__
MethodConfig.__doc__ = "The ``methods`` section: every training method's options (``depthlab.methods``)."


@dataclass
class DiagConfig:
    """Diagnostics during training, written to the run's diagnostics.jsonl (``depthlab.diagnostics``)."""
    quantities: Optional[str] = None           # "name@rule,...": rule N (every N epochs) | log | last | init
    at_init: bool = False                      # also run every scheduled quantity before step 0
    track_gradients: bool = False              # per-layer weight-gradient norms at every step


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    methods: MethodConfig = field(default_factory=MethodConfig)
    diagnostics: DiagConfig = field(default_factory=DiagConfig)
    out_dir: str = "runs"
    run_id: Optional[str] = None           # None: "<model>-<data>-s<seed>"

    # ----------------------------------------------------------------------------- building
    @classmethod
    def from_dict(cls, d: Optional[Dict[str, Any]]) -> "RunConfig":
        return _from_dict(cls, {} if d is None else d, prefix="")

    @classmethod
    def from_yaml(cls, path) -> "RunConfig":
        try:
            text = Path(path).read_text()
        except FileNotFoundError:
            raise ConfigError(f"config file {str(path)!r} does not exist") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file {str(path)!r} cannot be read: {_one_line(e)}") from None
        try:
            d = yaml.safe_load(text)
        except (yaml.YAMLError, ValueError, RecursionError) as e:  # ValueError: e.g. a date 2020-13-45
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {_one_line(e)}") from None
        if d is None:  # an empty file would silently train the defaults
            raise ConfigError(f"config file {str(path)!r} is empty; give at least one section, e.g. "
                              f"'model: {{name: plain56}}' (or leave out --config to train the defaults)")
        if not isinstance(d, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping, got {type(d).__name__}")
        return cls.from_dict(d)

    def with_overrides(self, overrides: Iterable[str]) -> "RunConfig":
        """Apply ``["train.lr=0.05", "model.name=plain56"]``; values are parsed as YAML scalars, except
        that a string field takes its text as written (``run_id=010`` is ``"010"``; quote to use YAML)."""
        d = self.to_dict()
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r} must look like section.key=value")
            key, raw = item.split("=", 1)
            parts = key.strip().split(".")
            node = d
            for p in parts[:-1]:
                if not isinstance(node.get(p), dict):
                    hint = _did_you_mean(key.strip(), valid_keys())
                    raise ConfigError(f"unknown config section {key.strip()!r};{hint} valid keys: "
                                      + ", ".join(valid_keys()))
                node = node[p]
            if parts[-1] not in node:
                raise ConfigError(f"unknown config key {key.strip()!r};{_did_you_mean(key.strip(), valid_keys())}"
                                  f" valid keys: " + ", ".join(valid_keys()))
            if isinstance(node[parts[-1]], dict):
                raise ConfigError(f"{key.strip()!r} is a config section, not a key; valid keys: "
                                  + ", ".join(k for k in valid_keys() if k.startswith(key.strip() + ".")))
            node[parts[-1]] = _parse_override(raw, _field_hint(parts), parts[-1] if parts[0] == "train" else "")
        return RunConfig.from_dict(d)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def validate(self) -> "RunConfig":
        """Check values that types alone cannot (positivity, names in registries)."""
        t, m, dt = self.train, self.model, self.data
        for name in ("epochs", "batch_size", "warmup_iters"):
            v = getattr(t, name)
            if v is not None and v <= 0 and not (name == "warmup_iters" and v == 0):
                raise ConfigError(f"train.{name} must be a positive integer, got {v}")
        if t.lr is not None and not t.lr > 0:
            raise ConfigError(f"train.lr must be > 0, got {t.lr}")
        _check_warmup(t)
        for name in ("momentum", "weight_decay"):
            v = getattr(t, name)
            if v is not None and v < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {v}")
        if t.eval_every <= 0:
            raise ConfigError(f"train.eval_every must be a positive integer, got {t.eval_every}")
        if t.keep_last <= 0:
            raise ConfigError(f"train.keep_last must be a positive integer, got {t.keep_last}")
        if t.threads is not None and t.threads <= 0:
            raise ConfigError(f"train.threads must be a positive integer, got {t.threads}")
        if t.optimizer_impl not in OPTIMIZER_IMPLS:
            raise ConfigError(f"train.optimizer_impl {t.optimizer_impl!r} is not valid; use one of "
                              f"{', '.join(OPTIMIZER_IMPLS)}")
        if t.compile not in COMPILE_MODES:
            raise ConfigError(f"train.compile {t.compile!r} is not valid; use one of {', '.join(COMPILE_MODES)}")
        if t.check_every <= 0:
            raise ConfigError(f"train.check_every must be a positive integer, got {t.check_every}")
        if t.checkpoint_segments < -1:
            raise ConfigError(f"train.checkpoint_segments must be 0 (off), a positive number of segments or "
                              f"-1 (sqrt of the block count), got {t.checkpoint_segments}")
        if not (t.device in ("auto", "cpu", "cuda", "mps") or t.device.startswith("cuda:")):
            raise ConfigError(f"train.device {t.device!r} is not valid; use auto, cpu, cuda, cuda:N or mps")
        if not 0.0 <= dt.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {dt.val_fraction}")
        if t.keep_best and dt.val_fraction <= 0:
            raise ConfigError("train.keep_best needs a validation split: set data.val_fraction > 0 "
                              "(the best checkpoint is never chosen on the test set)")
        if dt.augment is not None and dt.augment not in AUGMENTS:
            raise ConfigError(f"data.augment {dt.augment!r} is not valid; use one of {', '.join(AUGMENTS)}")
        if dt.crop_padding is not None and dt.crop_padding < 0:
            raise ConfigError(f"data.crop_padding must be >= 0, got {dt.crop_padding}")
        _check_run_id(self.run_id)
        _check_options("model", m, model_options())  # the family itself checks the rest when it builds
        self._validate_methods()
        if self.diagnostics.quantities:
            parse_schedule(self.diagnostics.quantities)
        _check_name("model.name", m.name, MODELS, FAMILIES, hint=model_name_hint(m.name))
        _check_name("data.name", dt.name, DATASETS)
        try:
            check_data_section(dt)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        _check_name("train.recipe", t.recipe, RECIPES)
        return self

    def _validate_methods(self) -> None:
        """Each method's options (declared with it), its refusals, and combinations it forbids."""
        _check_options("methods", self.methods, all_options())
        on = enabled_methods(self.methods)
        names = {cls.name for cls in on}
        for cls in on:
            clash = sorted(set(cls.conflicts) & names)
            if clash:
                other = METHODS.get(clash[0]).switch()
                raise ConfigError(f"methods.{cls.switch()} cannot be combined with methods.{other}")
            try:
                cls.validate(self)
            except ValueError as e:
                raise ConfigError(str(e)) from None

    @property
    def resolved_run_id(self) -> str:
        return self.run_id or f"{self.model.name}-{self.data.name}-s{self.train.seed}"

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.resolved_run_id


def _check_run_id(run_id: Optional[str]) -> None:
    """``run_id`` names one directory inside ``out_dir``: never a path that leads elsewhere."""
    if run_id is None:
        return
    bad = ("is empty or blank" if not run_id.strip() else
           "is a path" if "/" in run_id or "\\" in run_id or Path(run_id).is_absolute() else
           "is '.' or '..'" if run_id in (".", "..") else
           "holds a NUL byte" if "\0" in run_id else "")
    if bad:
        raise ConfigError(f"run_id {run_id!r} {bad}; it must be a single directory name inside out_dir (no '/', "
                          f"'\\', '..' or absolute path, not empty), e.g. run_id=plain56-a (CLI: --run-id plain56-a)")


def _check_warmup(t: TrainConfig) -> None:
    """``train.warmup_lr`` must be > 0 wherever a warm-up can run; 0 (what a recipe without a warm-up
    resolves to, so a saved config.json has it) is accepted only where none can run."""
    v = t.warmup_lr
    if v is None or v > 0:
        return
    recipe_warms = t.recipe in RECIPES and RECIPES.get(t.recipe).warmup_iters > 0
    if v == 0 and (t.warmup_iters == 0 or (t.warmup_iters is None and not recipe_warms)):
        return
    raise ConfigError(f"train.warmup_lr must be > 0 when a warm-up runs (train.warmup_iters > 0, or left empty "
                      f"with a recipe that warms up), got {v}; 0 is accepted only with train.warmup_iters=0")


SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "methods": MethodConfig,
            "diagnostics": DiagConfig}


def valid_keys():
    keys = []
    for sec, cls in SECTIONS.items():
        keys += [f"{sec}.{f.name}" for f in dataclasses.fields(cls)]
    return keys + ["out_dir", "run_id"]


def _check_options(section: str, values, options: Dict[str, Option]) -> None:
    """Every declared option's value against its declaration (choices, check)."""
    for key, option in options.items():
        problem = option.problem(getattr(values, key))
        if problem:
            raise ConfigError(f"{section}.{key} {problem}")


def _check_name(field_name, value, *registries, hint=""):
    if not any(value in r for r in registries):
        valid = list(dict.fromkeys(n for r in registries for n in r.names()))
        close = difflib.get_close_matches(str(value), valid, n=3)
        hint += f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ConfigError(f"{field_name} {value!r} is unknown.{hint} Valid names: {', '.join(valid)}")


SCHEDULE_RULES = ("N (every N epochs)", "log", "last", "init")


def parse_schedule(spec: str) -> Dict[str, str]:
    """``diagnostics.quantities`` ``"a@2,b@log,c"`` -> ``{"a": "2", "b": "log", "c": "1"}``, rules
    checked (the names are the diagnostics registry's, checked by the trainer)."""
    out = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, rule = item.partition("@")
        rule = rule or "1"
        if not (rule in ("log", "last", "init") or (rule.isdigit() and int(rule) > 0)):
            raise ConfigError(f"diagnostics.quantities: rule {rule!r} for {name!r} is not valid; "
                              f"use one of {', '.join(SCHEDULE_RULES)}")
        out[name.strip()] = rule
    return out


def _did_you_mean(key: str, valid) -> str:
    """`` did you mean 'model.name'?`` (the closest valid keys first), or empty."""
    close = difflib.get_close_matches(key, list(valid), n=2, cutoff=0.75)
    return f" did you mean {' or '.join(map(repr, close))}?" if close else ""


def _from_dict(cls, d, prefix):
    if not isinstance(d, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = [k for k in d if k not in fields]  # keys of any type (YAML allows 1: or null:)
    if unknown:
        key = unknown[0] if isinstance(unknown[0], str) else _show(unknown[0])
        hint = _did_you_mean(prefix + key, [prefix + f for f in fields])
        raise ConfigError(f"unknown config key {prefix + key!r};{hint} valid keys in "
                          f"{prefix.rstrip('.') or 'the top level'}: {', '.join(fields)}")
    kwargs = {}
    for name, value in d.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _from_dict(hint, value if value is not None else {}, prefix + name + ".")
        else:
            kwargs[name] = _coerce(prefix + name, value, hint)
    return cls(**kwargs)


def _unwrap(hint):
    """``Optional[X]`` -> ``(True, X)``; ``X`` -> ``(False, X)``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return True, next(a for a in typing.get_args(hint) if a is not type(None))
    return False, hint


def _field_hint(parts):
    """The type hint of the dotted key ``parts`` (which exists), e.g. ``["train", "lr"]``."""
    cls = RunConfig
    for p in parts[:-1]:
        cls = typing.get_type_hints(cls)[p]
    return typing.get_type_hints(cls)[parts[-1]]


NULLS = ("", "~", "null", "Null", "NULL")


# train.X=auto: None, the documented automatic choice
AUTO_FIELDS = ("threads", "bf16", "channels_last", "flush_denormal")


def _parse_override(raw, hint, key=""):
    """An override's value: YAML for bool/int/float fields; a str field's own text unless quoted."""
    text = raw.strip()
    if text in NULLS or (text == "auto" and key in AUTO_FIELDS):
        return None
    if _unwrap(hint)[1] is str and text[:1] not in ("'", '"'):
        return text  # not YAML's idea of it: 010 (octal 8), yes (True), x #1 (comment), 2020-01-01 (a date)
    try:
        return yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, RecursionError):  # ValueError: 2020-13-45, 5000-digit ints
        return text


def _show(value, limit=60):
    """``repr(value)`` for a one-line message: shortened, and safe for huge ints and deep nesting."""
    try:
        r = repr(value)
    except (ValueError, RecursionError):
        r = f"<{type(value).__name__}>"
    return r if len(r) <= limit else r[:limit - 3] + "..."


def _one_line(e):
    return " ".join(str(e).split())


def _coerce(path, value, hint):
    """Check ``value`` against a simple type hint (str/int/float/bool, optionally Optional)."""
    optional, hint = _unwrap(hint)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{path} may not be empty (expected {hint.__name__})")
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif hint is float:
        number = value
        if isinstance(value, str):  # YAML reads "1e-4" as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if isinstance(number, (int, float)) and not isinstance(number, bool):
            try:
                number = float(number)
            except OverflowError:  # an int beyond the float range
                number = math.inf
            if math.isfinite(number):
                return number
            raise ConfigError(f"{path} expects a finite float{' or null' if optional else ''}, got {_show(value)}")
    elif hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            try:
                return str(value)
            except ValueError:  # an int beyond the digit limit of str()
                pass
    raise ConfigError(f"{path} expects {hint.__name__}{' or null' if optional else ''}, "
                      f"got {_show(value)} ({type(value).__name__})")
