"""Export, parity, onnxruntime inference, latency and int8 quantisation on a real trained CNN and real data.

A tiny conv+BN+ReLU network with one residual block is trained for 100 steps on 2,000 Fashion-MNIST
training images (a few seconds) so that accuracy comparisons mean something. Needs the Fashion-MNIST
IDX files under data/FashionMNIST/raw (`make data`). Run: python -m pytest tests/test_export_runtime.py -q
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from compressor.core.errors import UserError
from compressor.export.int8 import quantize_int8
from compressor.export.onnx import check_parity, export_onnx
from compressor.export.sessions import check_onnx_file, create_session, onnx_predict
from compressor.verify.latency import latency_meta, measure_latency

DATA = Path(__file__).resolve().parents[1] / "data"
MEAN, STD = 0.2860, 0.3530
SHAPE = (1, 28, 28)
METADATA = {"arch": "tiny-cnn", "classes": json.dumps([str(i) for i in range(10)]), "mean": "[0.286]", "std": "[0.353]"}


def onnx_accuracy(session, images, labels) -> float:
    """Top-1 accuracy (%) of an onnxruntime session on (images, labels)."""
    return float(100.0 * (onnx_predict(session, images).argmax(1) == labels.numpy()).mean())


def conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class TinyNet(nn.Module):
    """(N, 1, 28, 28) -> (N, 10); the residual add is there because the real students have them."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(1, 16)  # (N, 16, 28, 28)
        self.block = nn.Sequential(conv_bn(16, 16), nn.Conv2d(16, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16))
        self.down = conv_bn(16, 32, stride=2)  # (N, 32, 14, 14)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        x = self.down(x)
        return self.fc(nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))  # (N, 32) -> (N, 10)


def load_fashion(train: bool, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision.datasets import FashionMNIST

    if not (DATA / "FashionMNIST" / "raw").is_dir():
        pytest.fail(f"Fashion-MNIST not found under {DATA}; run `make data`")
    ds = FashionMNIST(root=str(DATA), train=train, download=False)
    images = (ds.data[:n].float().div(255.0).unsqueeze(1) - MEAN) / STD  # (n, 1, 28, 28)
    return images, ds.targets[:n]


@pytest.fixture(scope="module")
def test_data() -> tuple[torch.Tensor, torch.Tensor]:
    return load_fashion(train=False, n=2000)


@pytest.fixture(scope="module")
def train_data() -> tuple[torch.Tensor, torch.Tensor]:
    return load_fashion(train=True, n=2000)


@pytest.fixture(scope="module")
def model(train_data) -> TinyNet:
    torch.manual_seed(0)
    train_images, labels = train_data
    net = TinyNet()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(100):
        idx = torch.randint(0, len(train_images), (64,))
        loss = nn.functional.cross_entropy(net(train_images[idx]), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.train()  # left in training mode on purpose: export and parity must not depend on it


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("export") / "model.onnx"
    return path, export_onnx(model, path, input_shape=SHAPE, metadata=METADATA)


@pytest.fixture(scope="module")
def session(exported):
    return create_session(exported[0], threads=1)


def torch_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    net = copy.deepcopy(model).eval()
    with torch.no_grad():
        return float(100.0 * (net(images).argmax(1) == labels).float().mean())


def test_export_is_one_self_contained_file_with_dynamic_batch(model, exported):
    path, info = exported
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx"]  # no .data file, no temp file
    assert info == {
        "path": str(path), "opset": 18, "dynamic_batch": True, "exporter": info["exporter"],
        "input_name": "input", "output_name": "logits", "bytes": path.stat().st_size,
    }
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    assert not any(onnx.external_data_helper.uses_external_data(t) for t in proto.graph.initializer)
    assert [o.version for o in proto.opset_import if o.domain == ""] == [18]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic, not a baked-in size
    assert {p.key: p.value for p in proto.metadata_props} == METADATA
    assert model.training  # the caller's model was not switched to eval

    raw = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for b in (1, 3, 17):
        (out,) = raw.run(["logits"], {"input": np.zeros((b, *SHAPE), np.float32)})
        assert out.shape == (b, 10)


def test_the_reused_translation_table_gives_the_same_graph(model, exported, tmp_path, monkeypatch):
    """The exporter's ATen-to-ONNX table is built once per process (compressor.export.onnx): an export with the
    table built afresh, as torch ships it, writes the same bytes, and each export gets its own copy of the table."""
    from torch.onnx._internal.exporter import _registration

    from compressor.export import onnx as onnx_export

    assert onnx_export.REGISTRY_REUSED  # the pinned torch has the hook; without it this test says so
    cached = _registration.ONNXRegistry.from_torchlib
    a, b = cached(), cached()
    assert a is not b and a.functions is not b.functions and a.functions == b.functions
    key = next(iter(a.functions))
    a.functions[key].append("a caller's own translation")
    assert cached().functions[key] == b.functions[key]  # did not leak into the next export's table

    monkeypatch.setattr(_registration.ONNXRegistry, "from_torchlib", classmethod(cached.__func__.uncached))
    fresh = tmp_path / "fresh.onnx"
    export_onnx(model, fresh, input_shape=SHAPE, metadata=METADATA)
    assert fresh.read_bytes() == exported[0].read_bytes()


def test_parity_of_a_faithful_export(model, exported, test_data):
    result = check_parity(model, exported[0], test_data[0][:64])
    assert set(result["per_batch"]) == {"1", "17"}
    assert result["max_abs_diff"] <= 1e-4
    assert result["argmax_agree"] == 1.0


def test_pytorch_answers_once_and_onnxruntime_at_each_batch_size(model, exported, test_data):
    """The reference is PyTorch's answer in chunks of the largest batch size (an image's logits do not depend on
    its batch; 68 eager passes at batch 1 were most of the check's time); each ONNX batch size is held to it."""
    calls = []
    hook = model.register_forward_hook(lambda _m, inputs, _out: calls.append(len(inputs[0])))
    try:
        result = check_parity(model, exported[0], test_data[0][:64])
    finally:
        hook.remove()
    assert calls == [17, 17, 17, 13]
    assert set(result["per_batch"]) == {"1", "17"} and max(result["per_batch"].values()) <= 1e-4


def test_parity_fails_when_the_onnx_graph_is_altered(model, exported, test_data, tmp_path):
    proto = onnx.load(exported[0])
    weight = max(proto.graph.initializer, key=lambda t: np.prod(t.dims))  # the largest conv kernel
    altered = numpy_helper.to_array(weight) * -1.0
    weight.CopyFrom(numpy_helper.from_array(altered, weight.name))
    onnx.save(proto, tmp_path / "altered.onnx")
    result = check_parity(model, tmp_path / "altered.onnx", test_data[0][:64])
    assert result["max_abs_diff"] > 0.1


def test_parity_fails_when_the_torch_model_is_perturbed(model, exported, test_data):
    perturbed = copy.deepcopy(model)
    with torch.no_grad():
        perturbed.down[0].weight.add_(0.5 * torch.randn_like(perturbed.down[0].weight))
    result = check_parity(perturbed, exported[0], test_data[0][:64])
    assert result["max_abs_diff"] > 0.1


def test_onnx_accuracy_agrees_with_torch(model, session, test_data):
    images, labels = test_data
    expected = torch_accuracy(model, images, labels)
    assert expected > 50.0  # the fixture is a trained model, not a random one
    assert abs(onnx_accuracy(session, images, labels) - expected) <= 0.1
    assert onnx_predict(session, images[:5], batch_size=2).shape == (5, 10)


def test_latency_statistics(session):
    latency = measure_latency(session, [1, 8], SHAPE, warmup=2, min_runs=5, min_seconds=0.0)
    assert set(latency) == {"1", "8"}
    for stats in latency.values():
        assert set(stats.model_dump()) == {"p50_ms", "p90_ms", "p99_ms", "mean_ms", "stdev_ms", "min_ms", "runs",
                                           "throughput", "round_p50_ms"}
        assert 0 < stats.min_ms <= stats.p50_ms <= stats.p90_ms <= stats.p99_ms
        assert stats.runs >= 5 and stats.stdev_ms >= 0 and stats.throughput > 0
    assert latency_meta(session) == {
        "provider": "CPUExecutionProvider", "threads": 1, "graph_optimization": "all",
        "io_binding": False, "onnxruntime": ort.__version__,
    }


def test_bad_onnx_files_are_rejected_before_a_session(exported, tmp_path):
    good = exported[0].read_bytes()
    (tmp_path / "truncated.onnx").write_bytes(good[: len(good) // 2])
    (tmp_path / "notes.onnx").write_text("this is not a model\n")
    two_d = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 784])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 784])],
    ))
    onnx.save(two_d, tmp_path / "flat.onnx")
    cases = {"truncated.onnx": "does not parse", "notes.onnx": "does not parse",
             "missing.onnx": "no such file", "flat.onnx": "rank 2"}
    for name, problem in cases.items():
        for check in (check_onnx_file, create_session):
            with pytest.raises(UserError) as err:
                check(tmp_path / name)
            (line,) = err.value.problems
            assert name in line and problem in line and "\n" not in line


def test_unexportable_model_is_a_user_error_and_leaves_the_old_file(tmp_path):
    class DataDependent(nn.Module):
        def forward(self, x):
            return x.mean((2, 3)) if x.sum() > 0 else x.amax((2, 3))

    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous model")
    with pytest.raises(UserError, match="cannot export DataDependent to ONNX"):
        export_onnx(DataDependent(), target, input_shape=SHAPE)
    assert target.read_bytes() == b"previous model"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_int8_quantization_keeps_accuracy(exported, session, train_data, test_data, tmp_path):
    out = tmp_path / "model.int8.onnx"
    info = quantize_int8(exported[0], out, train_data[0][:256])
    assert info["calibration_images"] == 256 and info["bytes"] == out.stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.int8.onnx"]
    proto = check_onnx_file(out)
    assert "QuantizeLinear" in {n.op_type for n in proto.graph.node}
    assert {p.key: p.value for p in proto.metadata_props}.items() >= METADATA.items()

    images, labels = test_data
    fp32 = onnx_accuracy(session, images, labels)
    int8 = onnx_accuracy(create_session(out, threads=1), images, labels)
    assert abs(int8 - fp32) <= 3.0
