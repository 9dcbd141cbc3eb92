"""Data-parallel training on several processes with PyTorch's own engine: torchrun + torch.distributed + DDP.

    torchrun --nproc_per_node 4 -m compressor distill teacher.pt --recipe R       (one process per GPU)
    compress distill teacher.pt --recipe R --nproc 4                              (the same; launches torchrun)
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29400 --rdzv-id RUN \
        -m compressor distill ...                                                 (two machines)

torchrun sets RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT; `setup` joins the process group from
them (NCCL on CUDA, gloo on the CPU). Without them every function here is the single-process no-op, so the
training loop has one code path.

The recipe's `train.batch_size` is the global batch: each rank takes its share of every global batch, and DDP
averages the gradients. Every loss term is a mean over the rank's images, so the average of the ranks' gradients
is the gradient of the global-batch loss: the loss scale (beta included) does not depend on the world size, unlike
the reference code, which sums per-GPU losses. Only rank 0 writes files.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from compressor.core.errors import EXIT_INTERRUPTED, CompressorError, UserError

# Rank 0 alone saves the training state between epochs while the others wait in the next collective; a slow
# shared filesystem must not trip the default 10-minute NCCL timeout.
TIMEOUT = timedelta(minutes=30)


def launched() -> bool:
    """True in a process started by torchrun (or anything else that sets its environment variables)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def per_rank_batch(batch_size: int, world: int | None = None) -> int:
    world = world_size() if world is None else world
    if batch_size % world:
        raise UserError(
            f"train.batch_size: {batch_size} is the global batch and must divide evenly over {world} processes "
            f"(e.g. {batch_size // world * world or world})"
        )
    return batch_size // world


def setup(device: torch.device, train_cfg) -> torch.device:
    """Join torchrun's process group if this process was started by it; return this rank's device.

    Checks the recipe's train section against the world size first, so a bad batch size fails before any data is
    loaded (what the loss terms support on several processes is distill.objective's to say).
    """
    if not launched():
        return device
    world, local_rank = int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    per_rank_batch(train_cfg.batch_size, world)
    if device.type == "cuda":
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", local_rank + 1))
        if per_node > torch.cuda.device_count():  # the same verdict on every rank, so all exit alike
            raise UserError(f"--nproc: {per_node} processes on this machine but {torch.cuda.device_count()} GPUs "
                            "visible; start at most one process per GPU")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif train_cfg.sync_bn and world > 1:
        raise UserError("train.sync_bn: SyncBatchNorm needs CUDA devices (PyTorch has no CPU implementation)")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT,
                            device_id=device if device.type == "cuda" else None)
    if not is_main():
        from compressor.core.progress import console

        console.quiet = True  # one voice: rank 0 prints progress, results and errors
    return device


def describe(train_cfg) -> dict:
    """What the report says about the parallel run: the global batch and the learning rate it was trained with."""
    world = world_size()
    return {
        "world_size": world,
        "backend": dist.get_backend() if active() else None,
        "global_batch": train_cfg.batch_size,
        "per_rank_batch": train_cfg.batch_size // world,
        "lr": train_cfg.lr,  # train.lr as written: it belongs to the global batch, so it is not rescaled
        "sync_bn": train_cfg.sync_bn and world > 1,
    }


def on_main(fn: Callable, *args, **kwargs):
    """Run `fn` (one that writes files) on rank 0 only; if it fails with a CompressorError, every rank raises
    it, so all processes exit alike instead of the others waiting for a rank that has gone."""
    if not active():
        return fn(*args, **kwargs)
    result, failure, err = None, [None], None
    if is_main():
        try:
            result = fn(*args, **kwargs)
        except CompressorError as e:
            failure = [(type(e).exit_code, e.problems)]
            err = e
    dist.broadcast_object_list(failure, src=0)
    if failure[0] is not None:
        if is_main():
            raise err
        code, problems = failure[0]
        e = CompressorError(*problems)
        e.exit_code = code
        raise e
    return result


def barrier() -> None:
    if active():
        dist.barrier()


def finish() -> bool:
    """End of training: wait for every rank, leave the process group, and say whether this is rank 0.

    Rank 0 goes on alone (test accuracy, ONNX export, verification, reports); the others are done. Leaving the
    group first means a long verification cannot run into a collective's timeout.
    """
    if not active():
        return True
    main = is_main()
    dist.barrier()
    dist.destroy_process_group()
    if main:  # the other processes on this machine are done: their CPU threads are free for evaluation
        local = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        torch.set_num_threads(min(os.cpu_count() or 1, torch.get_num_threads() * local))
    return main


def wrap(model: nn.Module, device: torch.device, sync_bn: bool = False) -> nn.Module:
    """The module the training step calls: `model` itself in one process, DDP around it in several.

    Parameters are shared, so the optimizer, hooks and state_dict keep using `model`. With `sync_bn` (CUDA) the
    BatchNorm layers are swapped in place for SyncBatchNorm, so batch statistics span the global batch;
    `unwrap` swaps them back.
    """
    if not active() or world_size() == 1:
        return model
    if sync_bn:
        nn.SyncBatchNorm.convert_sync_batchnorm(model)  # replaces children in place; `model` stays the root
    return nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def unwrap(model: nn.Module) -> nn.Module:
    """Turn SyncBatchNorm layers back into BatchNorm2d (same parameters and buffers) for export and checkpoints."""
    for name, child in model.named_children():
        if isinstance(child, nn.SyncBatchNorm):
            device = next(iter(child.state_dict().values())).device
            bn = nn.BatchNorm2d(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats,
                                device=device)
            bn.load_state_dict(child.state_dict())
            setattr(model, name, bn.train(child.training))
        else:
            unwrap(child)
    return model


def sum_over_ranks(sums: dict[str, torch.Tensor], correct: torch.Tensor, seen: int):
    """An epoch's metric sums over all ranks (one all_reduce): the loss terms, correct predictions, images."""
    if not active():
        return sums, correct, seen
    keys = list(sums)
    flat = torch.stack([*(sums[k].double() for k in keys), correct.double(),
                        torch.tensor(float(seen), dtype=torch.float64, device=correct.device)])
    dist.all_reduce(flat)
    return {k: flat[i].to(sums[k].dtype) for i, k in enumerate(keys)}, flat[-2].long(), int(flat[-1].item())


def agree(bad_step: torch.Tensor, stopping: bool) -> tuple[int, bool]:
    """(the first diverged step on any rank or -1, whether any rank was asked to stop): every rank then takes
    the same branch, so none is left waiting in a collective. Called where the loop syncs with the host anyway."""
    if not active():
        return int(bad_step.item()), stopping
    # one MAX all_reduce for both: a bad step s is sent as LATE - s, so the largest is the earliest step
    late = 1 << 62
    first = torch.where(bad_step >= 0, late - bad_step.long(), torch.zeros_like(bad_step, dtype=torch.long))
    flags = torch.stack([first, torch.tensor(int(stopping), device=bad_step.device)])
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    value = int(flags[0].item())
    return (late - value if value else -1), bool(flags[1].item())


def any_rank(flag: bool, device: torch.device) -> bool:
    if not active():
        return flag
    t = torch.tensor(int(flag), device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


# ---------------------------------------------------------------------------------------------- launching


def launch(nproc: int, argv: list[str]) -> int:
    """`compress distill --nproc N`: run `python -m compressor ARGV` on N local processes under torchrun
    (`torch.distributed.run`, in this process) and return the exit code the contract gives the outcome."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # torchrun would give each process one thread; share the cores instead (GPU runs barely use them)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    if os.environ.get("COMPRESSOR_DEBUG") != "1":  # the processes report their own errors; the agent's echo is noise
        for name in list(logging.root.manager.loggerDict):  # some set their own level: all of them, by name
            if name.startswith(("torch.distributed.run", "torch.distributed.elastic")):
                logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        run(parse_args(["--standalone", "--nproc-per-node", str(nproc), "-m", "compressor", *argv]))
    except ChildFailedError as e:
        codes = {r: f.exitcode for r, f in e.failures.items()}
        if codes.get(0, 0) > 0:  # rank 0 decides: 1 gate failed, 2 bad input, 130 interrupted
            return codes[0]
        return next((c for c in codes.values() if c > 0), 1)
    except (SignalException, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return 0
