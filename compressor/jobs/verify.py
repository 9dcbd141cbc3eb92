"""`compress verify`: any ONNX image classifier's accuracy on the recipe's test split and its latency, against a
baseline model and a reference checkpoint when given, with the same gates as `compress distill`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from compressor.core.device import environment, seed_everything
from compressor.core.errors import UserError, first_line
from compressor.core.fileio import write_json
from compressor.core.progress import console
from compressor.data.datasets import load_data
from compressor.data.batches import make_batches
from compressor.data.splits import DataBundle
from compressor.export.onnx import check_parity
from compressor.export.sessions import check_onnx_file, create_session, is_quantized, probe_classifier
from compressor.jobs.common import check_output, raise_failed
from compressor.models import checkpoint as ckpt_io
from compressor.models.evaluate import evaluate
from compressor.recipe.schema import Recipe
from compressor.report.markdown import latency_table
from compressor.teachers.load import open_model
from compressor.verify.accuracy import accuracy_of, onnx_split_predictions
from compressor.report.models import VerifyLatency, VerifyReport
from compressor.verify import gates
from compressor.verify.latency import latency_meta, measure_latencies, speedups
from compressor.verify.parity import parity_batch_sizes, parity_images
from compressor.verify.results import Parity


def _metadata(session) -> dict[str, str]:
    return dict(session.inner.get_modelmeta().custom_metadata_map or {})


def _model_input(session, data: DataBundle) -> dict:
    """What the model's own compressor.* metadata says it takes, checked against the recipe's data: the class
    list and image shape must agree (else the scores would be meaningless); the normalisation it was trained
    with is the one it is fed with. A model without metadata is fed the data's normalisation."""
    meta, path = _metadata(session), session.path
    try:
        classes = json.loads(meta["compressor.classes"]) if "compressor.classes" in meta else None
        shape = json.loads(meta["compressor.input_shape"]) if "compressor.input_shape" in meta else None
        mean = tuple(json.loads(meta["compressor.mean"])) if "compressor.mean" in meta else None
        std = tuple(json.loads(meta["compressor.std"])) if "compressor.std" in meta else None
    except (ValueError, TypeError):
        raise UserError(f"{path}: its compressor.* metadata is not valid JSON") from None
    if classes is not None and list(classes) != list(data.classes):
        raise UserError(f"{path}: was made for the classes {classes} (its metadata); the recipe's data has "
                        f"{list(data.classes)}")
    if shape is not None and tuple(shape) != tuple(data.input_shape):
        raise UserError(f"{path}: takes {tuple(shape)} images (its metadata); the recipe's data has {data.input_shape}")
    own = mean is not None and std is not None and len(mean) == len(std) == data.input_shape[0]
    return {"mean": list(mean if own else data.mean), "std": list(std if own else data.std),
            "normalisation": "model metadata" if own else "recipe data",
            "arch": meta.get("compressor.arch"), "kind": meta.get("compressor.kind")}


def _reference_parity(reference: Path, model_path: Path, data: DataBundle, fed: dict, accepted: list[int],
                      recipe: Recipe) -> tuple[Parity, object]:
    """--reference: the ONNX file's logits against the checkpoint's on real test images across the classes."""
    ref = open_model(reference, input_shape=data.input_shape, names=False)  # never unpickled: weights only
    if ref.source == "compressor checkpoint":
        model, _ = ckpt_io.load_model(reference)
    else:
        model = ref.model
    images = parity_images(data.test, data, recipe.seed, mean=fed["mean"], std=fed["std"])
    sizes = tuple(b for b in parity_batch_sizes(len(images)) if b in accepted) or (min(accepted),)
    if max(sizes) > len(images):
        raise UserError(f"{model_path}: its batch size {max(sizes)} is more than the {len(images)} parity images")
    try:
        parity = check_parity(model, model_path, images, batch_sizes=sizes)
    except UserError:
        raise
    except (RuntimeError, ValueError) as e:
        raise UserError(f"--reference: {reference} cannot run on the recipe's {data.input_shape} images "
                        f"({first_line(e)})") from None
    console.print(f"parity with {reference}: max |PyTorch - ONNX| = {parity['max_abs_diff']:.2e} on {len(images)} "
                  f"test images (largest |logit| {parity['scale']:.3g})")
    return Parity(**parity, reference=str(reference)), model


def _reference_predictions(model, data: DataBundle, fed: dict, batch: int) -> np.ndarray:
    """The reference checkpoint's top-1 on the whole test split, fed as the ONNX model is (an int8 model's
    agreement with the fp32 model it was quantised from)."""
    normalize = data.normalize(torch.device("cpu"), mean=fed["mean"], std=fed["std"])
    tested = evaluate(model, make_batches(data.test, batch, normalize), torch.device("cpu"), predictions=True)
    return tested["predictions"].numpy()


def verify_model(model_path: Path, recipe: Recipe, *, baseline: Path | None, out: Path, reference: Path | None = None,
                 force: bool = False) -> VerifyReport:
    """`compress verify`: ONNX accuracy on the recipe's test split and latency, against a baseline if given, and
    parity with the checkpoint it was exported from if `reference` is given.

    Any ONNX image classifier a user brings is taken: one with a fixed batch is scored and timed at the batch
    size it accepts; one that does not fit the data (image shape, class count, metadata) or does not run is
    refused with one line (exit 2)."""
    check_output(out, [model_path, baseline, reference], force)
    quantized = is_quantized(check_onnx_file(model_path))
    if baseline is not None:
        check_onnx_file(baseline)
    if reference is not None and not reference.is_file():
        raise UserError(f"--reference: {reference}: no such file")
    seed_everything(recipe.seed)
    data = load_data(recipe.data, recipe.seed)
    v = recipe.verify
    # one vocabulary: the model verified and the baseline it is compared with, in every section
    sessions = {"model": create_session(model_path, threads=v.threads, device=recipe.device)}
    if baseline is not None:
        sessions["baseline"] = create_session(baseline, threads=v.threads, device=recipe.device)
    eval_batch = 256
    fed, runs = {}, {}
    for role, sess in sessions.items():
        fed[role] = _model_input(sess, data)
        runs[role] = probe_classifier(sess, data.input_shape, data.num_classes, [*v.batch_sizes, eval_batch])
    accuracy, predicted = {}, {}
    for role, sess in sessions.items():
        batch = eval_batch if eval_batch in runs[role]["accepted"] else max(runs[role]["accepted"])
        predicted[role] = onnx_split_predictions(sess, data.test, data, batch, mean=fed[role]["mean"],
                                                 std=fed[role]["std"])
        accuracy[role] = accuracy_of(predicted[role], data.test)
    timed_sizes = [b for b in v.batch_sizes if all(b in r["accepted"] for r in runs.values())]
    skipped = {str(b): next(r["refused"][str(b)] for r in runs.values() if str(b) in r["refused"])
               for b in v.batch_sizes if b not in timed_sizes}
    for b, why in skipped.items():
        console.print(f"batch size {b}: not timed ({why})")
    rounds = v.rounds if baseline else 1
    timed = measure_latencies(sessions, timed_sizes, data.input_shape, warmup=v.warmup, min_runs=v.min_runs,
                              min_seconds=v.min_seconds, seed=recipe.seed, rounds=rounds)
    speedup, interval = speedups(timed["baseline"], timed["model"]) if baseline is not None else (None, None)
    latency = VerifyLatency(**latency_meta(sessions["model"]), rounds=rounds, model=timed["model"],
                            baseline=timed.get("baseline"), speedup=speedup, speedup_interval=interval,
                            skipped_batch_sizes=skipped)
    found, parity = [], None
    if reference is not None:
        parity, ref_model = _reference_parity(reference, model_path, data, fed["model"], runs["model"]["accepted"],
                                              recipe)
        if quantized:  # int8 computes other logits by design: a relative tolerance and top-1 agreement
            ref_pred = _reference_predictions(ref_model, data, fed["model"], eval_batch)
            differ = int((ref_pred != predicted["model"]).sum())
            parity = parity.model_copy(update={"quantized": True, "top1_differ": differ})
            found += [gates.int8_parity(parity.max_abs_diff, parity.scale), gates.int8_agreement(differ, len(data.test))]
        else:
            found.append(gates.parity("max_abs_diff", parity.max_abs_diff, parity.scale, v.max_abs_diff,
                                      v.parity_rtol))
    if baseline is not None:
        found += gates.accuracy_drop(accuracy["baseline"], accuracy["model"], v.max_accuracy_drop)
    found += gates.latency_gates(v, speedup, {b: s.p50_ms for b, s in latency.model.items()})
    device = "cuda" if sessions["model"].provider == "CUDAExecutionProvider" else "cpu"  # where the sessions ran
    result = VerifyReport(
        model=str(model_path), baseline=str(baseline) if baseline else None,
        reference=str(reference) if reference else None, accuracy=accuracy, test_images=len(data.test), input=fed,
        batch_sizes=runs, latency=latency, parity=parity, gates=found, passed=all(g.passed for g in found),
        environment={**environment(torch.device("cpu")), "device": device,
                     "onnxruntime_provider": sessions["model"].provider})
    write_json(out, result.model_dump(mode="json"))
    latency_table(result)
    console.print(f"wrote {out}")
    raise_failed(found)
    return result
