"""What every training backend offers the host-side trainer.

The golden integer model, the float references, the Verilator co-simulation and
a board all implement :class:`TrainingBackend`, so one trainer (``perturbo.train``)
drives them all.  A *step* is one weight update; it consumes
``samples_per_step(config)`` samples.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from .config import Config, Rule


def samples_per_step(cfg: Config) -> int:
    """Samples one update consumes: MGD integrates ``tau_theta`` perturbations of ``batch`` samples."""
    rules = set(cfg.layer_rules())
    if rules & {Rule.MGD_WEIGHT, Rule.MGD_NODE}:
        return cfg.rule.tau_theta * cfg.rule.batch
    return cfg.rule.batch


@runtime_checkable
class TrainingBackend(Protocol):
    """A model that trains on quantised samples.

    Inputs are integer tensors of shape ``(n, features)`` with values in 0..127 (the
    INT8 input format of docs/numerics.md) and labels are ``(n,)`` int64 class indices.
    """

    def train_step(self, x: torch.Tensor, labels: torch.Tensor) -> float:
        """One update on ``samples_per_step`` samples; returns the mean loss of the baseline passes."""
        ...

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Output scores ``(n, classes)``; the prediction is their argmax."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume bit-exactly (weights, accumulators, step counter)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
