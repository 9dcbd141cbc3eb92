"""compressor: distil a small, fast CNN from a large one with attention transfer + KD, export it to ONNX,
and prove it with onnxruntime.

The public Python API (the contract's, as the README's "The method, as implemented" shows): `attention_map`,
`at_loss`, `kd_loss`, `load_recipe`; the jobs themselves are `compressor.jobs.distill.distill` & co., with typed
results (`compressor.report.models`).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"
__all__ = ["at_loss", "attention_map", "kd_loss", "load_recipe", "__version__"]

# imported on first use (PEP 562), not with the package: `compress submit`, `compress jobs` and `compress serve token`
# run on CI runners and in scripts where importing torch first would cost them 1-2 s a call for nothing
_LAZY = {"at_loss": ".distill.at", "attention_map": ".distill.at", "kd_loss": ".distill.kd",
         "load_recipe": ".recipe.load"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
