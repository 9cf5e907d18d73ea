"""What every training backend offers the host-side trainer.

The golden integer model, the float references, the Verilator co-simulation and
a board all implement :class:`TrainingBackend`, so one trainer (``perturbo.train``)
drives them all.  A *step* is one weight update; it consumes
``config.rule.samples_per_step`` samples.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol, runtime_checkable

import torch

from .config import Backend, Config, Rule


@runtime_checkable
class TrainingBackend(Protocol):
    """A model that trains on quantised samples.

    Inputs are integer tensors of shape ``(n, features)`` with values in 0..127 (the
    INT8 input format of docs/numerics.md) and labels are ``(n,)`` int64 class indices.
    The golden models get :meth:`train_steps`, :meth:`close` and
    :attr:`max_steps_per_call` from :class:`OneStepAtATime`.
    """

    #: Steps one :meth:`train_steps` call may run (a backend behind a link runs many
    #: at once: the samples go over in one burst and the device runs them on its own).
    max_steps_per_call: int
    #: The learning-rate numerator (``LR_MULT``) the next step uses; ``None`` for the
    #: float references, which have none (``training.lr_mult_schedule`` needs it).
    lr_mult: int | None

    def train_step(self, x: torch.Tensor, labels: torch.Tensor) -> float:
        """One update on ``samples_per_step`` samples; returns the mean loss of the baseline passes."""
        ...

    def train_steps(self, x: torch.Tensor, labels: torch.Tensor, steps: int) -> list[float]:
        """``steps`` updates on ``steps * samples_per_step`` samples in order; every step's mean loss."""
        ...

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Output scores ``(n, classes)``; the prediction is their argmax."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume bit-exactly (weights, accumulators, step counter)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def close(self) -> None:
        """Release what the backend holds (a link, a co-simulation process)."""
        ...


class OneStepAtATime:
    """The part of :class:`TrainingBackend` a backend that runs in this process (the
    golden models) shares: one step per :meth:`train_step`, nothing to release."""

    max_steps_per_call = 1

    def train_steps(self, x: torch.Tensor, labels: torch.Tensor, steps: int) -> list[float]:
        n = x.shape[0] // steps
        return [self.train_step(x[i * n:(i + 1) * n], labels[i * n:(i + 1) * n])  # type: ignore[attr-defined]
                for i in range(steps)]

    def close(self) -> None:
        """Nothing to release."""


class BackendError(RuntimeError):
    """A backend that cannot be built here (not available yet, or its module fails to import)."""


class BackendFailure(RuntimeError):
    """A backend that stopped working while in use: the link to a board or to the co-simulation
    broke, the device stopped answering, or the co-simulation died.

    ``perturbo.sim``'s ``LinkError``, ``AcceleratorError`` and ``CosimError`` derive from it,
    so the command line reports them without importing the simulation modules.
    """


def make_backend(
    cfg: Config, backend_name: str = "golden", float_reference: bool = False, port: str | None = None,
    waves: Any = None,
) -> TrainingBackend:
    """Build the training backend called ``backend_name`` for ``cfg``.

    ``golden`` is the in-process torch model: the bit-exact integer model
    (``perturbo.golden.integer.IntegerModel``) for the integer rules, or the float
    reference (``perturbo.golden.float_ref.FloatModel``) when the rule is ``bp`` or
    ``float_reference`` is set. The golden modules are imported here, on demand.
    ``waves``: a :class:`perturbo.sim.backend.WaveWindow` the Verilator backend dumps.

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
    if waves is not None and name is not Backend.VERILATOR:
        raise BackendError(f"--waves dumps the Verilator co-simulation's signals; the {name.value} backend has "
                           "none to dump: train with --backend verilator")
    if name is not Backend.GOLDEN:
        if float_reference or Rule.BP in cfg.layer_rules():
            raise BackendError(f"the float references (rule bp, --float) run on the golden backend only, "
                               f"not on {name.value}: train them with --backend golden")
        return _hardware_backend(cfg, name, port, waves)
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


def check_accelerator(cfg: Config) -> None:
    """Refuse a configuration the accelerator cannot be generated for (a float rule, or
    memories beyond the largest target).

    Raises
    ------
    BackendError
        A rule the accelerator does not train.
    ConfigError
        The configuration does not fit (:func:`perturbo.limits.check_fits_target`).
    """
    from perturbo.hdl.accelerator import check_supported

    from .limits import check_fits_target

    try:
        check_supported(cfg)
    except ValueError as err:
        raise BackendError(str(err)) from None
    check_fits_target(cfg)


def _hardware_backend(cfg: Config, name: Backend, port: str | None, waves: Any = None) -> TrainingBackend:
    check_accelerator(cfg)
    from perturbo.host.accelerator import AcceleratorBackend
    from perturbo.host.link import Link
    from perturbo.sim.backend import VerilatorBackend
    from perturbo.sim.toolchain import ToolchainError

    if name is Backend.SERIAL and port is None:
        raise BackendError("the serial backend needs the board's port: --port /dev/ttyUSB1 (any pyserial URL)")
    try:
        if name is Backend.VERILATOR:
            return VerilatorBackend(cfg, waves=waves)
        link = Link(port, baudrate=cfg.hardware.baud)
        try:
            return AcceleratorBackend(cfg, link)
        except BaseException:
            link.close()
            raise
    except ToolchainError as err:
        raise BackendError(str(err)) from None
    except (BackendFailure, OSError) as err:
        if name is Backend.VERILATOR:
            raise BackendError(
                f"the Verilator co-simulation could not be started: {_one_line(err)}; "
                "check the Verilator install (bash .ci/install) or train on --backend golden"
            ) from None
        raise BackendError(
            f"no perturbo accelerator answers on {port}: {_one_line(err)}; check --port (a serial "
            "device such as /dev/ttyUSB1 or a pyserial URL such as socket://host:port), the cable, "
            "and that the board runs this configuration's bitstream (perturbo synth)"
        ) from None


def _one_line(err: BaseException) -> str:
    """An exception's message on one line (long tool logs are cut to their first line)."""
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]
