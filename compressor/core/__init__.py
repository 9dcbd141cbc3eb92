"""core/: what every stage uses and that knows nothing of the others: errors and exit codes (`errors`), atomic
files (`fileio`) and the record of which files a run wrote (`runrecord`), a job's progress, cancellation and the
terminal's bars (`progress`), devices and precision (`device`), memory (`memory`), how an image becomes a model's
input (`preprocess`), multi-process runs (`distributed`), the run lock (`runlock`), the one schedule helper (`schedule`) and
the on-disk cache of what runs rebuild identically (`cache`). Imports nothing else from compressor.
"""
