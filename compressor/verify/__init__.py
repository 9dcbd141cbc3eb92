"""verify/: proof that the exported student is what was promised: parity with PyTorch (`parity`), accuracy in
onnxruntime (`accuracy`), latency against the teacher in alternating rounds (`latency`), whether int8 ships
(`int8`), every gate as a pure function (`gates`), the typed results (`results`), and the distill job's
verification that returns them (`student`), and the timing of a latency search's candidates (`candidates`).
May import core, recipe, data, students (the search's `Measured`) and export.
"""
