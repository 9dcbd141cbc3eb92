"""Data: real Fashion-MNIST splits, batched augmentation, normalisation, reproducible order."""

import torch

from compressor.data.batches import Batches
from compressor.data.transform import Normalize, augment_batch
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


def test_a_built_in_dataset_at_another_size_and_in_rgb(tmp_path, cli):
    """data.image_size and data.channels mean something for Fashion-MNIST (issue 21: they were silently ignored):
    a 3-channel torchvision teacher distils on it at 32 px, each batch resized and its grey repeated into RGB on
    the device; the ONNX files say so; CIFAR's RGB cannot become grey and is refused with one line."""
    import json

    import onnx

    from compressor.data.datasets import load_data
    from compressor.models import create_model
    from compressor.recipe.schema import DataConfig

    from .conftest import RECIPE, sets

    data = load_data(DataConfig(name="fashion_mnist", limit_train=64, limit_test=20, channels=3, image_size=32), 0)
    assert data.input_shape == (3, 32, 32) and data.train.shape == (1, 28, 28)  # held at 28 px, grey
    assert data.mean == (0.2860,) * 3 and data.preprocess.stored_shape == (1, 28, 28)
    x = data.train.images[:5]
    got = data.normalize(torch.device("cpu"))(x)
    resized = torch.nn.functional.interpolate(x.float(), size=(32, 32), mode="bilinear", antialias=True)
    assert got.shape == (5, 3, 32, 32)
    assert torch.allclose(got, ((resized / 255 - 0.2860) / 0.3530).expand(-1, 3, -1, -1), atol=1e-5)

    torch.manual_seed(0)
    teacher = tmp_path / "resnet18.pt"
    torch.save(create_model("resnet18", 10, 3).state_dict(), teacher)
    out = tmp_path / "run"
    r = cli("distill", teacher, "--recipe", RECIPE, "--out", out, *sets(
        "teacher.arch=resnet18", "student.arch=resnet18-w0.25", "data.channels=3", "data.image_size=32",
        "data.limit_train=96", "data.limit_test=60", "train.batch_size=32", "train.lr=0.01", "verify.batch_sizes=[1]",
        "distill.at.pairs=[{teacher: layer3, student: layer3}]", "device=cpu"))
    assert r.exit_code in (0, 1), r.output
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["preprocess"]["size"] == [32, 32] and report["data"]["preprocess"]["grey_to_rgb"] is True
    model = onnx.load(out / "student.onnx")
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["compressor.input_shape"]) == [3, 32, 32]
    assert json.loads(meta["compressor.preprocess"])["resize_from"] == [28, 28]
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    assert dims == [3, 32, 32]
