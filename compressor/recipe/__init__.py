"""recipe/: the YAML recipe: its schema as pydantic models (`schema`) and reading, `--set` overrides and
validation with every problem listed at once (`load`). May import core and models (to check architecture names).
"""

from compressor.recipe.load import load_recipe
from compressor.recipe.schema import Recipe

__all__ = ["Recipe", "load_recipe"]
