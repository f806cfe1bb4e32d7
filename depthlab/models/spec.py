"""``ModelSpec`` (the resolved, validated config of one model) and the family/preset registries.

A *family* is a builder ``fn(spec: ModelSpec) -> DepthNet`` registered in ``FAMILIES`` together with
its layout, its depth rule and its defaults (``register_family``). A *preset* is a family plus
default overrides, registered in ``MODELS`` (``register_preset``). ``resolve_spec`` merges
family defaults < preset overrides < user overrides and validates every field, so a bad value fails
here, with a message naming the field and the valid values, before any module is built.

Adding a family later (highway, densenet) is one decorated builder plus a few presets::

    @register_family("highway", layout="cifar", residual=True, depths=DepthRule(2, 2), depth=20)
    def highway(spec): ...
    register_preset("highway50", "highway", depth=50)
"""
from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from depthlab.models.init import INITS
from depthlab.registry import Option, Registry, UnknownNameError

FAMILIES = Registry("model family")
MODELS = Registry("model")

SHORTCUTS = ("A", "B")
OVERRIDES = ("depth", "width", "num_classes", "in_channels", "shortcut", "init", "zero_init_residual")
COMMON_DEFAULTS = dict(num_classes=10, in_channels=3, shortcut="A", init="kaiming", zero_init_residual=False)


class UnknownOverrideError(TypeError, ValueError):
    """An override key ``build_model`` does not know; the message lists the valid keys."""


@dataclass(frozen=True)
class DepthRule:
    """The depths a family accepts: ``depth = step * n + offset`` for ``n >= 1``, or a fixed set.

    ``depth`` counts weighted layers on the main path (convs + fc), as He et al. 2015 do.
    """

    step: int = 0
    offset: int = 0
    choices: Tuple[int, ...] = ()

    def describe(self) -> str:
        if self.choices:
            return "valid depths are " + ", ".join(map(str, self.choices))
        examples = ", ".join(str(self.step * n + self.offset) for n in range(1, 6))
        return f"valid depths are {self.step}n+{self.offset} (n >= 1): {examples}, ..."

    def is_valid(self, depth: int) -> bool:
        if self.choices:
            return depth in self.choices
        return depth >= self.step + self.offset and (depth - self.offset) % self.step == 0

    def blocks(self, depth: int) -> int:
        """``n`` in ``step * n + offset`` (blocks per stage for the CIFAR layout)."""
        return (depth - self.offset) // self.step


@dataclass(frozen=True)
class ModelSpec:
    """Everything that determines a model's architecture and init; saved as ``model.spec``."""

    name: str                 # what was asked for: a preset ("resnet56") or a family ("resnet")
    family: str               # the builder in FAMILIES
    layout: str               # "cifar" | "imagenet" | "mnist"
    residual: bool            # False for plain families (shortcut used only when lesioned)
    depth: int                # weighted layers on the main path, e.g. 56
    width: int                # base channels (16 CIFAR / mnist, 64 ImageNet)
    num_classes: int
    in_channels: int
    shortcut: str             # "A" zero-pad identity | "B" 1x1 projection where shape changes
    init: str                 # a name in INITS
    zero_init_residual: bool  # last BN gamma (pre-act: last conv) of every residual branch = 0
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # family-specific, e.g. gate_bias

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["options"] = dict(self.options)
        return d


@dataclass(frozen=True)
class Preset:
    """A named family + default overrides, e.g. resnet56 = family "resnet" with depth 56."""

    family: str
    overrides: Dict[str, Any]
    description: str = ""


def register_family(name: str, *, layout: str, residual: bool, depths: DepthRule, description: str = "",
                    options: Optional[Dict[str, Any]] = None, validate: Optional[Callable] = None,
                    depth_from_options: Optional[Callable] = None, **defaults) -> Callable:
    """Decorator: register ``builder(spec) -> DepthNet`` as family ``name`` with its defaults.

    ``options`` are family-specific override keys: an ``Option`` (type, default, help) or a plain
    default whose type is the option's (e.g. ``gate_bias=-2.0``); they land in ``spec.options`` and
    become the config keys ``model.<key>`` (``model_options``). ``validate(spec)`` may raise ValueError
    for bad option values or
    combinations, naming the field and why. ``depth_from_options(options) -> int | None``: a depth
    the options fix (e.g. CIFAR ``stage_blocks``), which then replaces the depth rule: an unset depth
    is derived, a given one must agree (see ``resolve_spec``)."""
    unknown = set(defaults) - set(OVERRIDES)
    if unknown:
        raise ValueError(f"family {name!r}: unknown default(s) {sorted(unknown)}; valid: {', '.join(OVERRIDES)}")
    merged = {**COMMON_DEFAULTS, **defaults}
    missing = set(OVERRIDES) - set(merged)
    if missing:
        raise ValueError(f"family {name!r} needs defaults for {sorted(missing)}")
    clash = set(options or {}) & set(OVERRIDES)
    if clash:
        raise ValueError(f"family {name!r}: options {sorted(clash)} shadow common overrides")
    specs = {k: _as_option(name, k, v) for k, v in (options or {}).items()}
    known = model_options()
    for k, o in specs.items():
        if k in known and known[k].type is not o.type:
            raise ValueError(f"family {name!r}: option {k!r} is a {o.type.__name__} here but a "
                             f"{known[k].type.__name__} in another family (one config key, one type)")
    return FAMILIES.register(name, layout=layout, residual=residual, depths=depths, defaults=merged,
                             description=description, options={k: o.default for k, o in specs.items()},
                             option_specs=specs, validate=validate, depth_from_options=depth_from_options)


def _as_option(family: str, key: str, value: Any) -> Option:
    if isinstance(value, Option):
        return value
    if value is None:
        raise ValueError(f"family {family!r}: option {key!r} defaults to None; declare it as Option(type, None, help)")
    return Option(type(value), value)


def model_options() -> Dict[str, Option]:
    """``{key: Option}`` of every family option, in registration order: the config keys
    ``model.<key>`` beyond the common ones (each family rejects the options it does not have)."""
    out: Dict[str, Option] = {}
    for family in FAMILIES:
        for k, o in FAMILIES.meta(family)["option_specs"].items():
            out.setdefault(k, o)
    return out


def families_with(option: str) -> list:
    """The families that take ``model.<option>``."""
    return [f for f in FAMILIES if option in FAMILIES.meta(f)["options"]]


def register_preset(name: str, family: str, description: str = "", **overrides) -> Preset:
    """Register preset ``name`` = ``family`` with ``overrides`` (validated now, so typos fail at import)."""
    FAMILIES.get(family)
    preset = Preset(family, dict(overrides), description)
    MODELS.register(name, preset, family=family)
    resolve_spec(name)
    return preset


def unknown_model_message(name: Any) -> str:
    valid = MODELS.names() + [f for f in FAMILIES.names() if f not in MODELS]
    close = difflib.get_close_matches(str(name), valid, n=3)
    hint = model_name_hint(name) + (f" Did you mean {', '.join(map(repr, close))}?" if close else "")
    return (f"unknown model {name!r}.{hint} Valid presets: {', '.join(MODELS.names())}. "
            f"Valid families: {', '.join(FAMILIES.names())}")


def model_name_hint(name: Any) -> str:
    """`` For family 'plain' at depth 8, set model.name=plain model.depth=8.`` for a name that is a
    family and a depth without a preset (``plain8``), else empty."""
    found = re.fullmatch(r"(.*?)-?(\d+)", str(name))
    if not found or found.group(1) not in FAMILIES:
        return ""
    family, depth = found.group(1), int(found.group(2))
    rule = FAMILIES.meta(family)["depths"]
    valid = "" if rule.is_valid(depth) else f" ({rule.describe()})"
    return f" For family {family!r} at depth {depth}, set model.name={family} model.depth={depth}{valid}."


def resolve_spec(name: str, **overrides) -> ModelSpec:
    """Merge family defaults < preset overrides < ``overrides`` and validate; ``None`` means unset."""
    if isinstance(name, str) and name in MODELS:
        preset = MODELS.get(name)
        family, base = preset.family, preset.overrides
    elif isinstance(name, str) and name in FAMILIES:
        family, base = name, {}
    else:
        raise UnknownNameError(unknown_model_message(name))
    meta = FAMILIES.meta(family)
    unknown = [k for k in overrides if k not in OVERRIDES and k not in meta["options"]]
    if unknown:
        raise UnknownOverrideError(f"unknown model override(s) {', '.join(map(repr, unknown))} for family "
                                   f"{family!r}; valid keys: {', '.join(OVERRIDES + tuple(meta['options']))}")
    merged = {**meta["defaults"], **meta["options"], **base, **{k: v for k, v in overrides.items() if v is not None}}
    options = {k: merged.pop(k) for k in meta["options"]}
    # an option whose value is None is off: it is left out, so specs of models without it are unchanged
    options = {k: v for k, v in options.items() if v is not None}
    values = merged
    if isinstance(values["shortcut"], str):
        values["shortcut"] = values["shortcut"].upper()
    derive = meta.get("depth_from_options")
    derived = derive(options) if derive is not None else None
    if derived is not None:  # the options fix the depth: derive it when unset, else it must agree
        given = overrides.get("depth") if overrides.get("depth") is not None else base.get("depth")
        if given is not None and given != derived:
            fixing = ", ".join(f"{k}={v!r}" for k, v in options.items() if v != meta["options"][k])
            raise ValueError(f"depth {given!r} disagrees with the depth {derived} that the options of model "
                             f"family {family!r} fix ({fixing}); leave depth unset or set it to {derived}")
        values["depth"] = derived
    _validate(values, family, meta, depth_rule=derived is None)
    spec = ModelSpec(name=name, family=family, layout=meta["layout"], residual=meta["residual"], **values,
                     options=options)
    if meta["validate"] is not None:
        meta["validate"](spec)
    return spec


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _validate(v: Dict[str, Any], family: str, meta: dict, depth_rule: bool = True) -> None:
    rule: DepthRule = meta["depths"]
    if not _is_int(v["depth"]) or (depth_rule and not rule.is_valid(v["depth"])):
        raise ValueError(f"depth {v['depth']!r} is not valid for model family {family!r}: {rule.describe()}")
    if not _is_int(v["width"]) or v["width"] <= 0:
        raise ValueError(f"width must be a positive integer (base channels), got {v['width']!r}")
    if not _is_int(v["num_classes"]) or v["num_classes"] < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {v['num_classes']!r}")
    if not _is_int(v["in_channels"]) or v["in_channels"] < 1:
        raise ValueError(f"in_channels must be an integer >= 1, got {v['in_channels']!r}")
    if v["shortcut"] not in SHORTCUTS:
        raise ValueError(f"shortcut must be one of {', '.join(map(repr, SHORTCUTS))} "
                         f"(A: zero-pad identity, B: 1x1 projection), got {v['shortcut']!r}")
    if v["init"] not in INITS:
        raise ValueError(f"init {v['init']!r} is not a known init scheme; valid: {', '.join(INITS.names())}")
    if not isinstance(v["zero_init_residual"], bool):
        raise ValueError(f"zero_init_residual must be True or False, got {v['zero_init_residual']!r}")
    if not meta["residual"]:
        if v["shortcut"] != "A":
            raise ValueError(f"shortcut must be 'A' for the plain family {family!r}: plain blocks keep only a "
                             f"parameter-free zero-pad shortcut, used when a block is lesioned")
        if v["zero_init_residual"]:
            raise ValueError(f"zero_init_residual must be False for the plain family {family!r}: "
                             f"it would zero the output of every plain block")
