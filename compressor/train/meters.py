"""An epoch's running numbers, kept on the device so a step costs no host sync.

`EpochMeter` sums each loss term over the images seen, counts the correct top-1 predictions, and watches for the
first step whose loss is not finite (`Divergence`); the loop reads them only at its sync points
(`train.log_every`). A resumed epoch starts from the sums its interrupted run saved.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from compressor.core.errors import EXIT_USAGE, CompressorError
from compressor.core.progress import console
from compressor.distill.terms import full


class Diverged(CompressorError):
    """A non-finite loss. Exit 2, not 1: 1 promises a finished run with every artifact written, and the fix
    is in the input (train.lr, the loss weights), as for any other bad recipe."""

    exit_code = EXIT_USAGE


class RunningSums:
    """An epoch's loss terms summed over its images, kept on the device as one stacked tensor: a stack and an add
    per step for all terms, where summing term by term took two small kernels per term.
    `base`: the sums of an interrupted epoch's earlier steps, restored by --resume; the running sum starts from
    them, so a resumed epoch adds exactly what the uninterrupted one did."""

    def __init__(self, base: dict[str, torch.Tensor] | None = None):
        self.base = dict(base or {})
        self.names: list[str] | None = None
        self.acc: torch.Tensor | None = None

    def add(self, terms: dict[str, torch.Tensor], n: int) -> tuple[list[str], torch.Tensor]:
        """Adds n × each term; returns (names, the step's values stacked)."""
        values = torch.stack([full(terms[k].detach()) for k in (self.names or terms)])
        if self.names is None:
            self.names = list(terms)  # the same keys, in the same order, every step
            start = [torch.as_tensor(self.base.get(k, 0.0), dtype=values.dtype, device=values.device)
                     for k in self.names]
            self.acc = torch.stack(start)
        self.acc.add_(values, alpha=n)
        return self.names, values

    def sums(self) -> dict[str, torch.Tensor]:
        if self.acc is None:
            return dict(self.base)
        return {k: v.clone() for k, v in zip(self.names, self.acc)}


class Divergence:
    """The first step of an epoch whose loss is not finite or whose logits grew past `logit_bound`, and its loss
    terms, kept on the device: noticing costs no host sync (a few kernels for all terms together); the loop reads
    `step` only where it syncs anyway.

    Why a bound on the logits and not only NaN/inf: a run that blows up can stay finite for a long time (a grown
    efficientnet_b0 student reached logits of ~1e8 in one epoch, and only its export's parity gate noticed), and a
    model whose logits are that large amplifies every rounding. Healthy runs stay far below `train.max_logit`
    (measured: trained Fashion-MNIST teachers and students 17-25, untrained torchvision/timm/WRN models under 2;
    see the recipe key's description)."""

    def __init__(self, device: torch.device, logit_bound: float = float("inf")):
        self.bound = logit_bound
        self.step = torch.full((), -1, device=device, dtype=torch.long)
        self.names: list[str] = []
        self.first: torch.Tensor | None = None  # the terms at the first bad step
        self.first_peak = torch.zeros((), device=device)  # its largest |logit|
        self.latest: torch.Tensor | None = None  # the terms at the latest step
        self.peak = torch.zeros((), device=device)  # the largest |logit| of the epoch so far

    def see(self, step: int, names: list[str], values: torch.Tensor, logits: torch.Tensor | None = None) -> None:
        """values: the step's terms stacked in the order of `names` (which holds "total")."""
        self.names, self.latest = names, values
        peak = logits.detach().abs().amax().float() if logits is not None else torch.zeros_like(self.peak)
        self.peak = torch.maximum(self.peak, peak)
        wild = ~torch.isfinite(values[names.index("total")]) | (peak > self.bound) | ~torch.isfinite(peak)
        bad = (self.step < 0) & wild
        self.step = torch.where(bad, step, self.step)
        self.first = values if self.first is None else torch.where(bad, values, self.first)
        self.first_peak = torch.where(bad, peak, self.first_peak)

    def error(self, epoch: int, step: int, saved: str, *, weights: bool = False) -> Diverged:
        """weights=False: the loss or the logits of `step` went wild; True: they did not, but its update did."""
        values = self.latest if weights else self.first
        ordered = sorted(zip(self.names, values) if values is not None else [], key=lambda kv: kv[0] != "total")
        terms = ", ".join(f"{k}={v.item():.4g}" for k, v in ordered)  # the sum first, then its terms
        peak = self.first_peak.item()
        if weights:
            what = f"the weights are no longer finite (the loss was {terms})"
        elif peak > self.bound or peak != peak:
            what = (f"the logits grew to |z| = {peak:.3g}, beyond train.max_logit = {self.bound:g}, which a healthy "
                    f"run never reaches (the loss was {terms})")
        else:
            what = f"the loss is not finite ({terms})"
        return Diverged(
            f"training diverged at epoch {epoch + 1} step {step + 1}: {what}; {saved}; "
            "lower train.lr or the loss weights (distill.at.beta) and start again with --force"
        )


SETTLED_STEPS = 50  # BatchNorm's running statistics (momentum 0.1) keep 0.9^50 = 0.5 % of their start after this


def check_validation(v: dict, bound: float, epoch: int, saved: str, steps: int = SETTLED_STEPS) -> None:
    """After an epoch's update steps: a validation loss that is not finite is a diverged run (the last update may
    have blown up the weights with every training loss still finite), and so are logits past the bound once the
    run has taken `SETTLED_STEPS` steps. Before that, a scratch network's BatchNorm statistics are still mostly
    their initial values and its eval-mode logits can be wild in a healthy smoke run: said, not stopped."""
    loss, peak = v["loss"], v.get("max_abs_logit", 0.0)
    finite_loss = loss == loss and abs(loss) != float("inf")
    if finite_loss and peak <= bound:
        return
    if finite_loss and steps < SETTLED_STEPS:
        console.print(f"warning: after {steps} steps the validation logits reach |z| = {peak:.3g} (train.max_logit = "
                      f"{bound:g}): BatchNorm's running statistics have not settled; train longer before trusting "
                      "this model")
        return
    raise Diverged(f"training diverged in epoch {epoch + 1}: on the validation images the loss is {loss:.4g} and the "
                   f"logits reach |z| = {peak:.3g} (train.max_logit = {bound:g}): the model in eval mode is unusable; "
                   f"{saved}; lower train.lr or the loss weights (distill.at.beta) and start again with --force")


def means(sums: dict[str, torch.Tensor], seen: int) -> dict[str, float]:
    """Each term's mean over the images seen, read with one host sync."""
    if not sums:
        return {}
    values = (torch.stack([full(torch.as_tensor(v)) for v in sums.values()]) / max(seen, 1)).tolist()
    return dict(zip(sums, values))


def finite(model: nn.Module) -> bool:
    """Whether every weight and statistic is finite (one host sync); checked before any state is saved."""
    values = [torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point()]
    return bool(torch.stack(values).all()) if values else True


class EpochMeter:
    """One epoch's loss sums, correct predictions, images seen and seconds, from where a resumed epoch left off
    (`partial`: the saved sums of its steps before the interruption)."""

    def __init__(self, device: torch.device, partial: dict | None = None, logit_bound: float = float("inf")):
        self.correct = torch.zeros((), device=device, dtype=torch.long)
        self.seen, self.earlier_seconds, base = 0, 0.0, {}
        if partial:
            base = {k: v.to(device) for k, v in partial["sums"].items()}
            self.correct, self.seen = partial["correct"].to(device), partial["seen"]
            self.earlier_seconds = partial["seconds"]
        self.running, self.divergence = RunningSums(base), Divergence(device, logit_bound)
        self.t0 = time.perf_counter()

    def add(self, step: int, terms: dict[str, torch.Tensor], logits: torch.Tensor, labels: torch.Tensor) -> None:
        n = len(labels)
        self.divergence.see(step, *self.running.add(terms, n), logits)
        self.correct += (logits.detach().argmax(1) == labels).sum()
        self.seen += n

    @property
    def seconds(self) -> float:
        return self.earlier_seconds + time.perf_counter() - self.t0

    def means(self) -> dict[str, float]:
        return means(self.running.sums(), self.seen)

    def accuracy(self) -> float:
        return 100.0 * self.correct.item() / max(self.seen, 1)

    def so_far(self) -> dict:
        """What a mid-epoch checkpoint keeps, so that the resumed epoch reports the whole epoch."""
        return {"sums": self.running.sums(), "correct": self.correct, "seen": self.seen, "seconds": self.seconds}
