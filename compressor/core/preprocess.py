"""How an image becomes a model's input: one record (`Preprocess`) that the dataset makes, a teacher and a
checkpoint carry, every batch is normalised with (data.transform.Normalize) and the ONNX metadata is written from.

- An ImageFolder is decoded at the model's size: Resize(size / EVAL_CROP) then CenterCrop(size), the torchvision
  and timm convention, on both data paths and in `compress verify`.
- A built-in dataset (Fashion-MNIST, CIFAR) is held at its own size; where the recipe asks for another
  (`data.image_size`, `data.channels`), each batch is resized (bilinear, antialiased) and grey repeated into RGB
  on the device, so a 3-channel 224 px teacher distils on Fashion-MNIST without a 224 px copy of the dataset.
- Then (x / 255 - mean) / std per channel.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

EVAL_CROP = 0.875  # Resize(size / 0.875) then CenterCrop(size): 256 -> 224, torchvision's and timm's default


@dataclass(frozen=True)
class Preprocess:
    dataset: str
    input_shape: tuple[int, int, int]  # (C, H, W) the model takes
    mean: tuple[float, ...]
    std: tuple[float, ...]
    stored_shape: tuple[int, int, int] | None = None  # (C, H, W) the images are held at, where each batch is
    #                                                   converted to input_shape; None: held as the model takes them
    normalisation: str = "dataset"  # where mean/std come from: dataset | recipe | teacher | model metadata

    @property
    def crops(self) -> bool:
        """Whether images are decoded with the evaluation resize + centre crop (an ImageFolder)."""
        return self.dataset == "imagefolder"

    def with_normalisation(self, mean, std, source: str) -> "Preprocess":
        return replace(self, mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std), normalisation=source)

    def metadata(self) -> dict:
        """The `compressor.preprocess` ONNX metadata: how whoever deploys the model turns an image into its input."""
        c, h, w = self.input_shape
        if self.crops:
            steps = {"resize_shorter_side": round(h / EVAL_CROP), "center_crop": [h, w], "interpolation": "bilinear"}
        else:
            steps = {"size": [h, w]}
            if self.stored_shape is not None:
                sc, sh, sw = self.stored_shape
                if (sh, sw) != (h, w):
                    steps.update(resize_from=[sh, sw], interpolation="bilinear (antialiased)")
                if sc != c:
                    steps["grey_to_rgb"] = True
        return {**steps, "channels": c, "scale": 1 / 255, "mean": list(self.mean), "std": list(self.std)}

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        stored = d.get("stored_shape")
        return cls(str(d["dataset"]), tuple(d["input_shape"]), tuple(d["mean"]), tuple(d["std"]),
                   tuple(stored) if stored else None, str(d.get("normalisation", "dataset")))

    @classmethod
    def of_checkpoint(cls, ck: dict) -> "Preprocess":
        """A compressor checkpoint's record (written since issue 22), or the one its older fields imply."""
        if isinstance(ck.get("preprocess"), dict):
            return cls.from_dict(ck["preprocess"])
        return cls(str(ck.get("dataset", "")), tuple(ck["input_shape"]), tuple(ck["mean"]), tuple(ck["std"]))
