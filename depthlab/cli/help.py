"""Help texts made from the registries, so a new family, option, method, quantity or recipe shows in
``depthlab train --help`` and ``depthlab diagnose --help`` without an edit here."""
from __future__ import annotations


def _rows(pairs, indent: int = 2) -> str:
    pairs = list(pairs)
    width = min(34, max((len(k) for k, _ in pairs), default=0))
    return "\n".join(f"{' ' * indent}{k:<{width}}  {v}" for k, v in pairs)


def _value(v) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def _option_defaults(key: str, default) -> str:
    """``default relu; resnet, plain`` and, for families whose default differs, ``vanilla: tanh``."""
    from depthlab.models import FAMILIES
    from depthlab.models.spec import families_with

    fams = families_with(key)
    same = [f for f in fams if FAMILIES.meta(f)["options"][key] == default]
    other = [f"{f}: {_value(FAMILIES.meta(f)['options'][key])}" for f in fams if f not in same]
    return f"default {_value(default)}; {', '.join(same + other)}"


DATA_KEYS = (
    ("data.name=imagefolder data.path=P", "your own images: P is a folder, or a .tar/.tar.gz/.tgz/.zip of one, holding "
                                          "train/<class>/<image> and test/<class>/<image> (or val/); decoded once "
                                          "into a cache in the data dir"),
    ("data.resize=N", "imagefolder: resize every image to NxN (needed when their sizes differ)"),
    ("data.train_subset=N", "train on a stratified, seeded (data.seed) subset of N training images; normalised "
                            "with the subset's statistics; the val split is taken out first"),
    ("data.test_subset=N", "evaluate on a stratified, seeded (data.seed) subset of N test images (cheaper, noisier)"),
    ("data.name=cifar10 data.path=P", "CIFAR-10/100 from its class-folder form (PNG or JPEG), also found in "
                                      "<data dir>/cifar10/; the pickled batches are read first when present"),
)


def train_epilog() -> str:
    from depthlab.config import valid_keys
    from depthlab.methods import METHODS
    from depthlab.models import FAMILIES, INITS
    from depthlab.models.spec import model_options
    from depthlab.recipes import RECIPES

    recipes = _rows((n, RECIPES.get(n).description) for n in RECIPES)
    families = _rows((f"model.name={f}", FAMILIES.meta(f)["description"]) for f in FAMILIES)
    common = [("model.shortcut=A|B", "A: zero-pad identity (no parameters); B: 1x1 projection where shapes change"),
              ("model.zero_init_residual=true", "last BN gamma of each residual branch = 0 (identity at init)")]
    options = _rows(common
                    + [(f"model.init={n}", INITS.meta(n)["paper"]) for n in INITS]
                    + [(f"model.{k}", f"{o.help} ({_option_defaults(k, o.default)})")
                       for k, o in model_options().items()])
    methods = []
    for name in METHODS:
        m = METHODS.get(name)
        switch = " ".join(f"methods.{k}={_value(v)}" for k, v in m.example.items())
        methods.append((switch, f"{m.title} ({m.source})"))
        methods += [(f"  methods.{k}", f"{o.help} (default {_value(o.default)})") for k, o in m.options.items()
                    if k not in m.example]
    return (f"recipes:\n{recipes}\n\n"
            f"model families (any valid depth: model.depth=N; presets with parameter counts: depthlab models):\n"
            f"{families}\n\n"
            f"model options (family options name their families):\n{options}\n\n"
            f"training methods (remedies that change how a net trains; off by default):\n{_rows(methods)}\n\n"
            f"data (depthlab datasets lists every dataset):\n{_rows(DATA_KEYS)}\n\n"
            f"config keys (--set key=value):\n  {', '.join(valid_keys())}\n\n"
            "example:\n  depthlab train --set model.name=plain56 data.name=digits train.recipe=quick")


def quantities_text() -> str:
    from depthlab.diagnostics import DIAGNOSTICS, describe

    return _rows((n, describe(n)) for n in DIAGNOSTICS)
