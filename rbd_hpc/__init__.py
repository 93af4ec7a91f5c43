"""rbd_hpc: training neural networks in low-dimensional random bases, on HPC clusters.

The Python API (api.py) is ``rbd_hpc.fit``, ``rbd_hpc.load``, ``rbd_hpc.evaluate`` and
``rbd_hpc.scorer``; they are imported on first use, so ``import rbd_hpc.replay`` stays free of
the training loop.
"""

__version__ = "0.1.0"
__all__ = ["fit", "load", "evaluate", "scorer", "__version__"]


def __getattr__(name: str):
    if name in ("fit", "load", "evaluate", "scorer"):
        from . import api  # lazy: the API pulls in the training loop
        return getattr(api, name)
    raise AttributeError(f"module 'rbd_hpc' has no attribute {name!r}")
