"""A user's own model and data set, named by a factory spec ``MODULE:NAME``.

MODULE is a dotted module name importable on every node (``mypkg.nets``) or the path of a
Python file (``nets/tiny.py``); NAME is a function (or class) in it, dotted for a nested
attribute. The spec is what a run file's config records in place of a built-in name, so
``replay``, ``eval`` and resume rebuild the same model from it (docs/api.md).

  model factory: ``NAME()`` → ``torch.nn.Module``. It is called with torch's global random
      generator seeded from the run's seed (its state is restored afterwards), so PyTorch's
      default initialisation is reproducible; θ0 is rank 0's and is stored in the run file.
  data factory: ``NAME()`` → ``(train, test)``, each ``(x, y)`` arrays (or tensors) or a
      map-style torch Dataset of ``(x, y)`` pairs: x float samples of any shape, passed to the
      model as they are; y integer class labels in [0, classes).

This module imports nothing of the package but its errors, so any module may use it.
"""
from __future__ import annotations

import importlib
import importlib.util
import re
import sys
import zlib
from pathlib import Path

from .errors import UserError

_SPEC = re.compile(r"^(?P<module>[^:]+):(?P<name>[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*)$")


def is_spec(value) -> bool:
    """True for ``MODULE:NAME`` (a factory of the user's own), False for a built-in name."""
    return isinstance(value, str) and _SPEC.match(value) is not None


def _module(module: str, spec: str, flag: str):
    if module.endswith(".py"):
        path = Path(module).resolve()
        if not path.is_file():
            raise UserError(f"{flag} {spec}: no file {module}")
        key = f"rbd_hpc_user_{zlib.crc32(str(path).encode()):08x}_{path.stem}"
        if key in sys.modules:
            return sys.modules[key]
        loader = importlib.util.spec_from_file_location(key, path)
        mod = importlib.util.module_from_spec(loader)
        sys.modules[key] = mod
        try:
            loader.loader.exec_module(mod)
        except Exception as e:
            del sys.modules[key]
            raise UserError(f"{flag} {spec}: importing {module} failed: "
                            f"{type(e).__name__}: {e}") from None
        return mod
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        raise UserError(f"{flag} {spec}: no module {e.name!r} (is it installed, or on "
                        "PYTHONPATH on every node?)") from None
    except Exception as e:
        raise UserError(f"{flag} {spec}: importing {module} failed: "
                        f"{type(e).__name__}: {e}") from None


def load_factory(spec: str, flag: str):
    """The callable ``spec`` names; a UserError naming the spec and what is wrong."""
    match = _SPEC.match(spec) if isinstance(spec, str) else None
    if match is None:
        raise UserError(f"{flag} {spec!r} is not a factory spec; write MODULE:NAME, e.g. "
                        "mypkg.nets:make_model or nets.py:make_model")
    obj = _module(match["module"], spec, flag)
    for part in match["name"].split("."):
        if not hasattr(obj, part):
            raise UserError(f"{flag} {spec}: {match['module']} has no attribute {part!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserError(f"{flag} {spec}: {match['name']} is not callable")
    return obj


def call_factory(factory, spec: str, flag: str):
    """``factory()``, with an exception it raises reported as one line naming the spec."""
    try:
        return factory()
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"{flag} {spec}: the factory raised {type(e).__name__}: {e}") from None


def spec_of(factory) -> str | None:
    """The spec that names ``factory`` again in another process, or None when nothing does
    (a lambda, a closure, a function of an interactive session)."""
    if isinstance(factory, str):
        return factory
    name = getattr(factory, "__qualname__", "")
    module = getattr(factory, "__module__", None)
    if not name or "<" in name or module is None:
        return None
    if module == "__main__":
        main = sys.modules.get("__main__")
        main_spec = getattr(main, "__spec__", None)
        if main_spec is not None and main_spec.name != "__main__":
            module = main_spec.name  # run as python -m pkg.mod
        elif getattr(main, "__file__", None):
            module = str(Path(main.__file__).resolve())  # run as python path/to/script.py
        else:
            return None
    return f"{module}:{name}"
