"""compressor: distil a small, fast CNN from a large one with attention transfer + KD, export it to ONNX,
and prove it with onnxruntime.

The public Python API (the contract's, as the README's "The method, as implemented" shows): `attention_map`,
`at_loss`, `kd_loss`, `load_recipe`; the jobs themselves are `compressor.jobs.distill.distill` & co., with typed
results (`compressor.report.models`).
"""

from .distill.at import at_loss, attention_map
from .distill.kd import kd_loss
from .recipe.load import load_recipe

__version__ = "0.1.0"
__all__ = ["at_loss", "attention_map", "kd_loss", "load_recipe", "__version__"]
