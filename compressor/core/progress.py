"""A job's progress and its cancellation, and the terminal's view of them.

A long job (`compress distill`, `compress train`) reports what it is doing as `ProgressEvent`s through a
`Reporter`: the phase (loading, growing, training, exporting, verifying, reporting), and while it trains the epoch,
the step, images/s, the ETA, the running loss terms and, at each epoch's end, its metrics.jsonl row. Whoever runs
the job subscribes: the terminal's progress bar (`TerminalProgress`) is one listener, the job service another.
The reporter also carries the caller's cancellation check; the training loop polls it between steps and stops as
SIGTERM does (the state saved, `Interrupted`), and the job checks it between phases.

Output goes to stderr so stdout carries only results; on a non-terminal (CI logs, a service's job log) the live
bar is not drawn and the per-epoch lines are what remains.

    reporter = Reporter("distill", [TerminalProgress(), events.append], cancel=stop_requested.is_set)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True, highlight=False)

# what a job does, in order; a job skips the phases it has none of (`compress train` does not grow or export)
PHASES = ("loading", "growing", "training", "testing", "exporting", "verifying", "reporting", "done")


class CancelRequested(Exception):
    """Raised between a job's phases when its caller cancelled it; like KeyboardInterrupt, the job's outermost
    layer turns it into `Cancelled` with what was kept."""


@dataclass(frozen=True)
class ProgressEvent:
    """One report of a running job. Training fields are None outside the training phase."""

    job: str  # "distill" | "train"
    phase: str  # one of PHASES
    message: str = ""  # one line for a person: what is being done
    epoch: int | None = None  # 1-based
    epochs: int | None = None
    step: int | None = None  # steps done in this epoch
    steps: int | None = None  # steps of an epoch
    images_per_second: float | None = None
    eta_seconds: float | None = None  # the rest of the training at the current speed (validation not counted)
    losses: dict[str, float] | None = None  # the epoch's running means of the loss terms
    accuracy: float | None = None  # the epoch's running top-1 on the training batches, %
    metrics: dict | None = None  # at an epoch's end: its metrics.jsonl row

    def to_dict(self) -> dict:
        return asdict(self)


Listener = Callable[[ProgressEvent], None]


class Reporter:
    """Sends a job's events to its listeners and answers whether the caller asked to cancel it."""

    def __init__(self, job: str, listeners: Iterable[Listener] = (), cancel: Callable[[], bool] | None = None):
        self.job = job
        self.listeners = list(listeners)
        self._cancel = cancel
        self.phase_name = "loading"

    def emit(self, phase: str | None = None, **fields) -> None:
        if phase is not None:
            self.phase_name = phase
        event = ProgressEvent(self.job, self.phase_name, **fields)
        for listener in self.listeners:
            listener(event)

    def phase(self, phase: str, message: str = "") -> None:
        """A new phase begins; a cancelled job stops here rather than start it."""
        self.check_cancel()
        self.emit(phase, message=message)

    def cancelled(self) -> bool:
        return bool(self._cancel and self._cancel())

    def check_cancel(self) -> None:
        """Between phases: a cancelled job stops before the next one starts (the job turns CancelRequested into
        `Cancelled`, exit 130, saying how to go on)."""
        if self.cancelled():
            raise CancelRequested(self.phase_name)


def eta(epoch: int, epochs: int, step: int, steps: int, seconds: float, first: int = 0) -> float | None:
    """Seconds left in the training at this epoch's speed: `seconds` spent on steps first..step of epoch (1-based)."""
    done = step - first
    if done <= 0 or seconds <= 0:
        return None
    left = (steps - step) + (epochs - epoch) * steps
    return left * seconds / done


def _fmt_loss(losses: dict[str, float]) -> str:
    parts = [f"loss {losses.get('total', 0.0):.3f}"]
    parts += [f"{k} {v:.3f}" for k, v in losses.items() if k != "total"]
    return " ".join(parts)


class TerminalProgress:
    """The terminal's subscriber: a rich progress bar per epoch (loss, accuracy, img/s) and one line per epoch."""

    def __init__(self, out: Console | None = None):
        self.console = out or console
        self._progress: Progress | None = None
        self._task = None
        self._epoch: int | None = None

    def __call__(self, event: ProgressEvent) -> None:
        if event.phase != "training" or event.epoch is None:
            self.close()
            return
        if event.metrics is not None:
            self.end_epoch(event.job, event.metrics)
        elif event.epoch != self._epoch or self._progress is None:
            self.start_epoch(event.job, event.epoch, event.epochs, event.steps, event.step or 0)
        elif event.losses is not None:
            self.update(event.step, event.losses, event.accuracy or 0.0, event.images_per_second or 0.0)

    def start_epoch(self, label: str, epoch: int, epochs: int, total: int, completed: int = 0) -> None:
        self.close()
        self._epoch = epoch
        self._progress = Progress(
            TextColumn(f"[bold]{label}[/] epoch {epoch}/{epochs}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[stats]}"),
            console=self.console,
            transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task("train", total=total, completed=completed, stats="")

    def update(self, step: int, losses: dict[str, float], accuracy: float, images_per_second: float) -> None:
        if self._progress is not None:
            stats = f"{_fmt_loss(losses)} acc {accuracy:.1f}% {images_per_second:.0f} img/s"
            self._progress.update(self._task, completed=step, stats=stats)

    def end_epoch(self, label: str, row: dict) -> None:
        self.close()
        val = f" val {row['val_accuracy']:.2f}%" if "val_accuracy" in row else ""
        self.console.print(
            f"{label} epoch {row['epoch']}: {_fmt_loss(row['train_loss'])} train {row['train_accuracy']:.2f}%"
            f"{val} {row['images_per_second']:.0f} img/s {row['train_seconds']:.1f}s lr {row['lr']:.4g}"
        )

    def close(self) -> None:
        self._epoch = None
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
