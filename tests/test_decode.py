"""Every image decodes as it is (issue 21): each PIL mode an image folder may hold, written to a real file, decoded
by the one decoder both data paths use, against a reference decoding computed here from the pixel values alone."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from compressor.data.streaming import decode

RNG = np.random.default_rng(0)


def decoded(path: Path, channels: int) -> np.ndarray:
    return np.asarray(decode(str(path), channels)).astype(np.int64)


def png16(path: Path, values: np.ndarray) -> Path:
    """A 16-bit PNG (grey (H, W) or RGB (H, W, 3)) written byte by byte, so no library decides the pixels."""
    h, w = values.shape[:2]
    kind = 0 if values.ndim == 2 else 2

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(h))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, kind, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def test_a_16_bit_grey_png_is_scaled_not_clipped(tmp_path):
    values = RNG.integers(0, 65536, (24, 20)).astype(np.uint16)
    values[0, :3] = [0, 65535, 257 * 100]
    path = png16(tmp_path / "g16.png", values)
    expected = np.rint(values / 257.0)  # 0..65535 -> 0..255
    assert (decoded(path, 1) == expected).all()
    assert (decoded(path, 3) == expected[..., None]).all()  # grey repeated into R, G and B
    assert decoded(path, 1)[0, :3].tolist() == [0, 255, 100]


def test_a_16_bit_rgb_png_keeps_its_colours(tmp_path):
    values = RNG.integers(0, 65536, (16, 16, 3)).astype(np.uint16)
    path = png16(tmp_path / "rgb16.png", values)
    assert np.abs(decoded(path, 3) - values / 257.0).max() <= 1.0  # to within 8-bit rounding


def test_a_float_image_in_the_unit_range(tmp_path):
    values = RNG.random((12, 12)).astype(np.float32)
    path = tmp_path / "f.tif"
    Image.fromarray(values, "F").save(path)
    assert (decoded(path, 1) == np.rint(values.astype(np.float64) * 255)).all()


def test_palette_images_go_through_their_palette(tmp_path):
    palette = RNG.integers(0, 256, (256, 3)).astype(np.uint8)
    index = RNG.integers(0, 256, (10, 14)).astype(np.uint8)
    im = Image.fromarray(index, "P")
    im.putpalette(palette.flatten().tolist())
    plain, transparent = tmp_path / "p.png", tmp_path / "pt.png"
    im.save(plain)
    im.save(transparent, transparency=int(index[0, 0]))  # a tRNS chunk: one palette entry transparent
    for path in (plain, transparent):
        assert (decoded(path, 3) == palette[index]).all()
        luma = palette[index] @ np.array([299, 587, 114]) / 1000
        assert np.abs(decoded(path, 1) - luma).max() <= 1


def test_alpha_is_dropped_and_the_colour_kept(tmp_path):
    rgba = RNG.integers(0, 256, (9, 11, 4)).astype(np.uint8)
    la = RNG.integers(0, 256, (9, 11, 2)).astype(np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    assert (decoded(tmp_path / "rgba.png", 3) == rgba[..., :3]).all()
    assert (decoded(tmp_path / "la.png", 1) == la[..., 0]).all()
    assert (decoded(tmp_path / "la.png", 3) == la[..., :1]).all()


def test_cmyk_is_converted_to_rgb(tmp_path):
    cmyk = RNG.integers(0, 256, (8, 8, 4)).astype(np.uint8)
    Image.fromarray(cmyk, "CMYK").save(tmp_path / "c.tif")  # TIFF: lossless CMYK
    c, m, y, k = (cmyk[..., i].astype(np.float64) for i in range(4))
    expected = np.stack([(255 - c) * (255 - k), (255 - m) * (255 - k), (255 - y) * (255 - k)], -1) / 255
    assert np.abs(decoded(tmp_path / "c.tif", 3) - expected).max() <= 1


def test_grey_and_rgb_mix_into_the_channels_asked_for(tmp_path):
    grey = RNG.integers(0, 256, (7, 7)).astype(np.uint8)
    rgb = RNG.integers(0, 256, (7, 7, 3)).astype(np.uint8)
    bits = RNG.integers(0, 2, (7, 7)).astype(bool)
    Image.fromarray(grey, "L").save(tmp_path / "l.png")
    Image.fromarray(rgb, "RGB").save(tmp_path / "rgb.png")
    Image.fromarray(bits).save(tmp_path / "bits.png")  # mode "1"
    assert (decoded(tmp_path / "l.png", 3) == np.repeat(grey[..., None], 3, -1)).all()
    assert (decoded(tmp_path / "l.png", 1) == grey).all()
    assert np.abs(decoded(tmp_path / "rgb.png", 1) - rgb @ np.array([299, 587, 114]) / 1000).max() <= 1
    assert (decoded(tmp_path / "bits.png", 1) == bits * 255).all()


@pytest.mark.parametrize("channels", [1, 3])
def test_a_broken_file_is_one_line(tmp_path, channels):
    from compressor.core.errors import UserError

    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(UserError, match="broken.png: not a readable image"):
        decode(str(tmp_path / "broken.png"), channels)


def test_a_folder_of_16_bit_pngs_scores_as_its_8_bit_copy(teacher_ckpt, tmp_path, cli):
    """Through the real CLI: the same test images as 8-bit and as 16-bit PNGs (each value x 257) must give the
    teacher exactly the same accuracy; clipped to 0/255, the 16-bit folder scored near chance."""
    import json

    from torchvision.datasets import FashionMNIST

    from compressor.export.onnx import export_onnx
    from compressor.models.checkpoint import load_model

    from .conftest import RECIPE, ROOT, sets

    ds = FashionMNIST(str(ROOT / "data"), train=False, download=False)
    for folder, bits in (("eight", 8), ("sixteen", 16)):
        for split, count in (("train", 1), ("test", 12)):
            for label in range(10):  # folders c0..c9: sorted, they are Fashion-MNIST's label order
                d = tmp_path / folder / split / f"c{label}"
                d.mkdir(parents=True)
                for i, j in enumerate((ds.targets == label).nonzero().flatten()[:count].tolist()):
                    pixels = ds.data[j].numpy()
                    if bits == 8:
                        Image.fromarray(pixels, "L").save(d / f"{i}.png")
                    else:
                        png16(d / f"{i}.png", pixels.astype(np.uint16) * 257)
    model, ck = load_model(teacher_ckpt)
    onnx_file = tmp_path / "teacher.onnx"  # no compressor metadata: the folder's class names are c0..c9
    export_onnx(model, onnx_file, input_shape=tuple(ck["input_shape"]))
    accuracy = {}
    for folder in ("eight", "sixteen"):
        out = tmp_path / f"{folder}.json"
        r = cli("verify", onnx_file, "--recipe", RECIPE, "--out", out, *sets(
            "data.name=imagefolder", f"data.root={tmp_path / folder}", "data.image_size=28", "data.channels=1",
            f"data.mean={ck['mean']}", f"data.std={ck['std']}", "data.limit_test=null", "verify.batch_sizes=[1]"))
        assert r.exit_code in (0, 1), r.output
        accuracy[folder] = json.loads(out.read_text())["accuracy"]["model"]
    assert accuracy["sixteen"] == accuracy["eight"] > 15  # above chance (10 %): a 1-epoch teacher, resized images
