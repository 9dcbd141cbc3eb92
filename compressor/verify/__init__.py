"""verify/: proof that the exported student is what was promised: parity with PyTorch (`parity`), accuracy in
onnxruntime (`accuracy`), latency against the teacher in alternating rounds (`latency`), whether int8 ships
(`int8`), the gates (`gates`), and the distill job's verification that returns its report sections (`student`).
May import core, models, recipe, data and export.
"""
