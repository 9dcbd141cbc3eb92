"""distill/: what the student learns from the teacher.

Owns the attention points (`points`: hooks and dry forwards) and their pairing (`pairs`: the `Pair` dataclass),
one module per loss term (`at`, `kd`, `grad_at`, `feature`; `terms`: what a term is) and the `objective` that
composes the enabled terms, from the recipe's distill section. May import core; nothing here trains, exports
or verifies. A new loss term: one module here and one line in `objective.TERMS`.
"""

from compressor.distill.at import at_loss, attention_map
from compressor.distill.kd import kd_loss
from compressor.distill.objective import TERMS, Objective
from compressor.distill.pairs import Pair, find_pairs

__all__ = ["TERMS", "Objective", "Pair", "at_loss", "attention_map", "find_pairs", "kd_loss"]
