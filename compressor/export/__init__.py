"""export/: the student as an ONNX file: the export itself with its parity check (`onnx`), the onnxruntime
sessions that run it (`sessions`), its metadata (`metadata`) and int8 quantisation (`int8`). May import core,
models and data.
"""
