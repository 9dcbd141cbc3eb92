"""Terminal output: a rich progress bar per epoch (loss, accuracy, img/s) and one summary line per epoch.

Progress goes to stderr so stdout carries only results; on a non-terminal (CI logs) the live bar is not
drawn and the per-epoch lines are what remains.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True, highlight=False)


def _fmt_loss(losses: dict[str, float]) -> str:
    parts = [f"loss {losses.get('total', 0.0):.3f}"]
    parts += [f"{k} {v:.3f}" for k, v in losses.items() if k != "total"]
    return " ".join(parts)


class TrainProgress:
    def __init__(self, label: str, out: Console | None = None):
        self.label = label
        self.console = out or console
        self._progress: Progress | None = None
        self._task = None

    def start_epoch(self, epoch: int, epochs: int, total: int, completed: int = 0) -> None:
        self.close()
        self._progress = Progress(
            TextColumn(f"[bold]{self.label}[/] epoch {epoch}/{epochs}"),
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

    def end_epoch(self, row: dict) -> None:
        self.close()
        val = f" val {row['val_accuracy']:.2f}%" if "val_accuracy" in row else ""
        self.console.print(
            f"{self.label} epoch {row['epoch']}: {_fmt_loss(row['train_loss'])} train {row['train_accuracy']:.2f}%"
            f"{val} {row['images_per_second']:.0f} img/s {row['train_seconds']:.1f}s lr {row['lr']:.4g}"
        )

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
