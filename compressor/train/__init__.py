"""train/: the loop that trains a student (or a teacher from scratch) and everything it keeps.

Owns the set-up of a run (`setup`), the loop (`loop.fit`), the resumable state (`state`), the running numbers
(`meters`) and the optimiser with its learning-rate schedule (`optim`). May import core, models, recipe, data,
teachers (BatchNorm folding) and distill (the objective, the pairs, the taps).
"""
