"""students/: the model that is distilled: sized to a parameter or FLOP budget (`sizing`), grown from the
teacher by structured pruning (`pruning`), or built from the registry, and rebuilt on --resume (`build`).
May import core, models, recipe, data and teachers.
"""
