"""data/: the images. Datasets split into train / validation / test (`datasets`), in-memory batches with
augmentation (`batches`), and the streaming loader for image folders too large for memory (`streaming`).
`python -m compressor.data ROOT` makes sure Fashion-MNIST is present under ROOT. May import core.
"""
