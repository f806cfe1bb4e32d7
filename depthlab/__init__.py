"""depthlab: build, train and diagnose very deep convolutional networks.

Public API (mirrors the CLI)::

    import depthlab
    depthlab.list_models()
    model = depthlab.build_model("resnet56", num_classes=10)
    data = depthlab.load_dataset("digits")
    result = depthlab.train(depthlab.RunConfig.from_dict({"model": {"name": "plain20"}}))
"""
from importlib import import_module

from depthlab.version import __version__

_EXPORTS = {
    "build_model": "depthlab.models",
    "adapt": "depthlab.models.adapt",
    "list_models": "depthlab.models",
    "count_params": "depthlab.models",
    "load_dataset": "depthlab.data",
    "list_datasets": "depthlab.data",
    "DeviceLoader": "depthlab.data",
    "RunConfig": "depthlab.config",
    "train": "depthlab.training",
    "evaluate_run": "depthlab.training",
    "run_demo": "depthlab.demo",
    "diagnose": "depthlab.diagnose_run",
    "track": "depthlab.tracking",
    "reproduce": "depthlab.experiments",
    "list_experiments": "depthlab.experiments",
    "write_report": "depthlab.report",
    "compare": "depthlab.report",
    "run_sweep": "depthlab.sweep",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name):  # lazy, so `import depthlab` stays cheap and layers load on demand
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'depthlab' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
