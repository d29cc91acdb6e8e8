"""peapod: personalized prompt distillation (PeaPOD) for generative recommendation on T5.

`import peapod` stays light: `peapod.Recommender` (and its errors `UnknownUser`, `UnknownItem`) are
imported, with torch and transformers, on first use.
"""

__version__ = "0.1.0"

__all__ = ["Recommender", "UnknownItem", "UnknownUser", "__version__"]

_LAZY = {
    "Recommender": "peapod.serve.recommender",
    "UnknownUser": "peapod.serve.recommender",
    "UnknownItem": "peapod.serve.recommender",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'peapod' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
