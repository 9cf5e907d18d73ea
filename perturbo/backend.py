"""What every training backend offers the host-side trainer.

The golden integer model, the float references, the Verilator co-simulation and
a board all implement :class:`TrainingBackend`, so one trainer (``perturbo.train``)
drives them all.  A *step* is one weight update; it consumes
``samples_per_step(config)`` samples.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol, runtime_checkable

import torch

from .config import Backend, Config, Rule


def samples_per_step(cfg: Config) -> int:
    """Samples one update consumes: ``tau_theta`` windows of ``batch`` samples (docs/numerics.md)."""
    return cfg.rule.tau_theta * cfg.rule.batch


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


class BackendError(RuntimeError):
    """A backend that cannot be built here (not available yet, or its module fails to import)."""


def make_backend(
    cfg: Config, backend_name: str = "golden", float_reference: bool = False, port: str | None = None
) -> TrainingBackend:
    """Build the training backend called ``backend_name`` for ``cfg``.

    ``golden`` is the in-process torch model: the bit-exact integer model
    (``perturbo.golden.integer.IntegerModel``) for the integer rules, or the float
    reference (``perturbo.golden.float_ref.FloatModel``) when the rule is ``bp`` or
    ``float_reference`` is set. The golden modules are imported here, on demand.

    Raises
    ------
    BackendError
        The backend is unknown, not available yet, or its module cannot be imported.
    """
    try:
        name = Backend(backend_name)
    except ValueError:
        allowed = ", ".join(b.value for b in Backend)
        raise BackendError(f"unknown backend {backend_name!r}; choose one of {allowed}") from None
    if name is not Backend.GOLDEN:
        if float_reference or Rule.BP in cfg.layer_rules():
            raise BackendError(f"the float references run on the golden backend only, not on {name.value}")
        return _hardware_backend(cfg, name, port)
    use_float = float_reference or Rule.BP in cfg.layer_rules()
    module, cls = ("float_ref", "FloatModel") if use_float else ("integer", "IntegerModel")
    try:
        mod = importlib.import_module(f"perturbo.golden.{module}")
        factory = getattr(mod, cls)
    except (ImportError, AttributeError) as err:
        raise BackendError(
            f"the golden model perturbo.golden.{module}.{cls} cannot be loaded: {err}"
        ) from err
    return factory(cfg)


def _hardware_backend(cfg: Config, name: Backend, port: str | None) -> TrainingBackend:
    from perturbo.hdl.accelerator import SUPPORTED_RULES

    unsupported = sorted({r.value for r in cfg.layer_rules()} - {r.value for r in SUPPORTED_RULES})
    if unsupported:
        raise BackendError(
            f"rule.name: the accelerator trains {', '.join(r.value for r in SUPPORTED_RULES)}, "
            f"not {', '.join(unsupported)} (a float baseline); train it with --backend golden"
        )
    from perturbo.sim.backend import AcceleratorBackend, VerilatorBackend
    from perturbo.sim.driver import Link
    from perturbo.sim.toolchain import ToolchainError

    try:
        if name is Backend.VERILATOR:
            return VerilatorBackend(cfg)
        if port is None:
            raise BackendError("the serial backend needs the board's port: --port /dev/ttyUSB1 (any pyserial URL)")
        return AcceleratorBackend(cfg, Link(port, baudrate=cfg.hardware.baud))
    except ToolchainError as err:
        raise BackendError(str(err)) from None
