"""teachers/: the model the student learns from, in any format a user brings: safe loading and the data
checks (`load`), the file formats (`formats`), TorchScript / torch.export programs as hookable graphs (`graphs`),
and BatchNorm folding of the frozen teacher for faster steps (`fold`). May import core, models and data.
"""
