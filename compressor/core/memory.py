"""How much memory a run may still take, and the one-line refusal when a recipe asks for more.

A recipe's batch and image size decide a run's memory, not the data's size: a batch whose estimated footprint does
not fit is refused before it is allocated (the kernel's OOM killer would otherwise end the run with no message, or
a cgroup / `ulimit -v` limit with a traceback). The estimate comes from the models (models.measure.Footprint); the
limit from what this process can still get: the RAM the kernel says is available, the cgroup's limit, the
address-space limit (`ulimit -v`), or the GPU's free memory.

An out-of-memory error that still happens (an estimate is an estimate) becomes one line and exit 2 (`is_oom`,
used by the CLI's error handling), never a traceback.
"""

from __future__ import annotations

import gc
import os
import resource
from pathlib import Path
from typing import TYPE_CHECKING

from compressor.core.errors import UserError

if TYPE_CHECKING:  # the annotations only: torch is imported where CUDA is asked about
    import torch


# The cyclic collector's thresholds for a process compressor owns (the CLI, a Ray worker): Python's default young
# generation of 700 objects made a tiny `compress distill` run 8 full collections, ~1 s of its ~8 s, most of them
# while importing torch, onnxscript and matplotlib (all still alive: nothing to find). 50,000 leaves 0.4 s of
# collecting; the cycles a run makes are still collected, in fewer passes.
GC_THRESHOLDS = (50_000, 20, 10)


def fewer_collections() -> None:
    """Raise the cyclic collector's thresholds (GC_THRESHOLDS) for this process: for process entry points only,
    never called from the library, whose caller owns its process."""
    gc.set_threshold(*GC_THRESHOLDS)


def _meminfo(key: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_headroom() -> int | None:
    """memory.max - memory.current of this process's cgroup (v2), where a limit is set."""
    try:
        rel = Path("/proc/self/cgroup").read_text().strip().splitlines()[0].split(":", 2)[2]
        base = Path("/sys/fs/cgroup") / rel.lstrip("/")
        limit = (base / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int((base / "memory.current").read_text().strip())
    except (OSError, ValueError, IndexError):
        return None


def _address_space_headroom() -> int | None:
    """RLIMIT_AS (ulimit -v) less the address space this process already maps."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return soft - int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return soft


def available(device: torch.device | None = None) -> tuple[int | None, str]:
    """(bytes this process can still allocate on `device`, where the figure comes from); None: unknown."""
    if device is not None and device.type == "cuda":
        import torch  # here: the CLI's error handling imports this module, and `compress submit` never needs torch

        free, _ = torch.cuda.mem_get_info(device)
        return free, f"free memory of {torch.cuda.get_device_name(device)}"
    limits = [(v, why) for v, why in ((_meminfo("MemAvailable"), "RAM available on this machine"),
                                      (_cgroup_headroom(), "left under this cgroup's memory.max"),
                                      (_address_space_headroom(), "left under the address-space limit (ulimit -v)"))
              if v is not None]
    if not limits:
        return None, "unknown"
    return min(limits, key=lambda t: t[0])


def gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"


def require(need: int, what: str, device: torch.device | None, hint: str) -> None:
    """Refuse (UserError, exit 2) when `need` bytes are more than the device has left: one line with both."""
    have, source = available(device)
    if have is None or need <= have:
        return
    raise UserError(f"{what} needs an estimated {gb(need)}, more than the {gb(max(have, 0))} {source}; {hint}")


def fitting_batch(per_image: int, fixed: int, want: int, device: torch.device | None, share: float = 0.5) -> int:
    """The largest batch up to `want` whose footprint (fixed + batch x per_image) stays within `share` of what the
    device has left: for the batches a run chooses itself (evaluation, calibration), which adapt rather than fail."""
    have, _ = available(device)
    if have is None or per_image <= 0:
        return want
    return max(1, min(want, int((have * share - fixed) // per_image)))


# what the allocators say when they cannot (PyTorch's CPU and CUDA allocators, onnxruntime's arena, a DataLoader
# worker the kernel killed)
_OOM_MARKERS = ("can't allocate memory", "cannot allocate memory", "out of memory", "failed to allocate memory",
                "not enough memory", "is killed by signal: killed", "std::bad_alloc")


def is_oom(e: BaseException) -> bool:
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return True
    return isinstance(e, RuntimeError) and any(m in str(e).lower() for m in _OOM_MARKERS)


def oom_message(e: BaseException) -> str:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return (f"out of memory ({first[:200]}); lower train.batch_size, data.image_size or verify.batch_sizes, or free "
            "memory and run it again (--resume goes on from the last saved state)")


def rss_peak() -> int:
    """This process's peak resident set so far, in bytes (what the benchmarks and the note report)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 if os.name == "posix" else 0
