"""Data: real Fashion-MNIST splits, batched augmentation, normalisation, reproducible order."""

import torch

from compressor.data.batches import Batches, Normalize, augment_batch
from compressor.data.datasets import load_data
from compressor.recipe.schema import DataConfig


def test_splits_are_seeded_and_disjoint():
    cfg = DataConfig(limit_train=1000, limit_test=200, val_fraction=0.1)
    a, b = load_data(cfg, seed=0), load_data(cfg, seed=0)
    assert (len(a.train), len(a.val), len(a.test)) == (900, 100, 200)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.val.labels, b.val.labels)
    assert a.input_shape == (1, 28, 28) and a.num_classes == 10 and a.classes[9] == "Ankle boot"
    # validation images are held out of the training images
    train_keys = {img.numpy().tobytes() for img in a.train.images}
    assert not any(img.numpy().tobytes() in train_keys for img in a.val.images)
    assert not torch.equal(load_data(cfg, seed=1).val.images, a.val.images)


def test_augmentation_is_pad_crop_flip():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8, generator=g)
    out = augment_batch(x, pad=4, flip=True, g=torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == torch.uint8
    # every output is a shifted (and maybe mirrored) copy: its centre 20x20 appears in the reflect-padded input
    padded = torch.nn.functional.pad(x.float(), (4, 4, 4, 4), mode="reflect")
    for i in range(8):
        found = False
        for img in (out[i].float(), out[i].float().flip(-1)):
            for dy in range(9):
                for dx in range(9):
                    if torch.equal(padded[i, :, dy : dy + 28, dx : dx + 28], img):
                        found = True
        assert found, i
    # no padding and no flip: identity
    assert torch.equal(augment_batch(x, pad=0, flip=False, g=g), x)
    # some images really are moved or mirrored
    assert (out != x).flatten(1).any(1).float().mean() > 0.5


def test_batches_are_normalised_and_reproducible():
    data = load_data(DataConfig(limit_train=600, limit_test=100, val_fraction=0.0), seed=0)
    norm = Normalize(data.mean, data.std, torch.device("cpu"))
    batches = Batches(data.train, 128, norm, train=True, pad=4, flip=True, seed=3, drop_last=True)
    assert len(batches) == 4
    first = [x for x, _ in batches.iterate(epoch=0)]
    again = [x for x, _ in batches.iterate(epoch=0)]
    other = [x for x, _ in batches.iterate(epoch=1)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])
    # resuming mid-epoch yields exactly the remaining batches
    assert all(torch.equal(a, b) for a, b in zip(first[2:], [x for x, _ in batches.iterate(epoch=0, start=2)]))
    # evaluation batches are the raw images, normalised: mean ~0 and std ~1 over the split
    x = torch.cat([x for x, _ in Batches(data.train, 256, norm)])
    assert abs(x.mean().item()) < 0.1 and abs(x.std().item() - 1) < 0.1
