"""The accelerator as a training backend, over a link: the same host code for a board and the
co-simulation.

:class:`AcceleratorBackend` implements :class:`perturbo.backend.TrainingBackend` over a
:class:`~perturbo.host.link.Link` (any pyserial URL): a board is
``AcceleratorBackend(cfg, Link("/dev/ttyUSB1", baudrate=...))``, and
:class:`perturbo.sim.backend.VerilatorBackend` connects one to the Verilator
co-simulation over ``socket://127.0.0.1:PORT``.

Its state dicts are the golden :class:`~perturbo.golden.integer.IntegerModel`'s, so a
checkpoint written on one backend resumes on the other.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from perturbo.backend import BackendFailure, samples_per_step
from perturbo.config import Config
from perturbo.golden.integer import init_weights
from perturbo.hdl.bus import ACCEL_ID, Command, Reg, Space, Status
from perturbo.hdl.geometry import Geometry, config_hash
from perturbo.hdl.registers import config_values

from .link import Link

__all__ = ["AcceleratorBackend", "AcceleratorError", "Counters"]


class AcceleratorError(BackendFailure):
    """The accelerator on the other end is not the one the configuration describes, or it stalled."""


@dataclass(frozen=True)
class Counters:
    """The accelerator's cycle and event counters (since the last clear)."""

    cycles: int
    steps: int
    stalls: int
    mac_busy: int
    last_loss: int

    @property
    def mac_utilisation(self) -> float:
        """Share of lane-cycles doing useful multiply-accumulates while busy."""
        return self.mac_busy / self.cycles if self.cycles else 0.0


class AcceleratorBackend:
    """Train on an accelerator (board or simulation) reached through a :class:`Link`.

    Parameters
    ----------
    cfg : Config
        The configuration the accelerator was generated from (checked against
        ``Reg.CONFIG_HASH``).
    link : Link
        An open link.
    weights : list of torch.Tensor, optional
        Initial master weights; default :func:`~perturbo.golden.integer.init_weights`.
    poll_interval : float
        Seconds between ``STATUS`` reads while a command runs.
    """

    def __init__(self, cfg: Config, link: Link, *, weights: list[torch.Tensor] | None = None,
                 poll_interval: float = 0.002) -> None:
        self.cfg = cfg
        self.link = link
        self.geo = Geometry(cfg)
        self.poll_interval = poll_interval
        #: ``STATUS`` reads made while waiting for commands (each one request and reply on the
        #: link: a slow link or a fast accelerator needs one per command)
        self.status_polls = 0
        ident = link.read_word(Space.REGS, Reg.ID)
        if ident != ACCEL_ID:
            raise AcceleratorError(f"no perturbo accelerator answers on the link (ID {ident:#010x})")
        found, expected = link.read_word(Space.REGS, Reg.CONFIG_HASH), config_hash(cfg)
        if found != expected:
            raise AcceleratorError(
                f"the accelerator was generated from another configuration (hash {found:#010x}, "
                f"this configuration {expected:#010x}); regenerate it with `perturbo gen`"
            )
        rule = cfg.rule
        self.samples_per_step = samples_per_step(cfg)
        if link.read_word(Space.REGS, Reg.STATUS) & Status.BUSY:
            # an earlier session left a command running, and every write is refused until
            # it stops: stop it (the state it leaves is overwritten below)
            print("perturbo: note: the accelerator was still running a command from an earlier "
                  "session; aborted it", file=sys.stderr)
            self._abort(timeout=60 + 0.5 * self.samples_per_step)
        #: the accelerator trains (False: an inference-only build, ``hardware.training: false``)
        self.training = cfg.hardware.training
        # every register that carries a configuration value, from the one register map
        self._write_regs({**config_values(cfg), **({Reg.STEP: 0} if self.training else {})})
        self._lr_mult = rule.lr_mult
        self._write_matrices(Space.WEIGHTS, weights if weights is not None else init_weights(cfg))
        if self.geo.momentum and self.training:
            self._write_matrices(Space.MOMENTUM, [torch.zeros(lay.n_out, lay.cols, dtype=torch.int64)
                                                  for lay in self.geo.layers])
        #: the step counter as the host tracks it (the next step run is ``step + 1``)
        self.step = 0
        #: steps one :meth:`train_steps` call may run: as many as the sample buffer holds
        self.max_steps_per_call = max(1, self.geo.sample_depth // self.samples_per_step)

    # -- registers and memories -----------------------------------------------------------

    def _write_regs(self, values: dict[Reg, int]) -> None:
        for reg, value in values.items():
            self.link.write_word(Space.REGS, reg, int(value))

    def _write_matrices(self, space: Space, mats: list[torch.Tensor]) -> None:
        self.link.write_words(space, 0, self.geo.to_image(mats))

    def _read_matrices(self, space: Space) -> list[torch.Tensor]:
        image = self.link.read_words(space, 0, self.geo.rows * self.geo.lanes, dtype=np.int32)
        return [torch.from_numpy(w) for w in self.geo.from_image(image)]

    def _load_samples(self, x: torch.Tensor, labels: torch.Tensor | None) -> None:
        self.link.write_words(Space.SAMPLES, 0, x.to(torch.int64).reshape(-1).numpy())
        if labels is not None:
            self.link.write_words(Space.LABELS, 0, labels.to(torch.int64).numpy())

    def _run(self, command: Command, timeout: float) -> None:
        self.link.write_word(Space.REGS, Reg.COMMAND, int(command))
        try:
            self._wait_done(command, timeout)
        except KeyboardInterrupt:
            # leave the accelerator usable: stop the command where its state is whole
            with contextlib.suppress(Exception):
                self._abort(timeout)
            raise

    def _abort(self, timeout: float) -> None:
        """ABORT the running command; wait until it has stopped (after the step in progress)."""
        self.link.write_word(Space.REGS, Reg.COMMAND, int(Command.ABORT))
        self._wait_done(Command.ABORT, timeout)

    def _wait_done(self, command: Command, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            status = self.link.read_word(Space.REGS, Reg.STATUS)
            self.status_polls += 1
            if status & Status.DONE and not status & Status.BUSY:
                return
            if time.monotonic() > deadline:
                raise AcceleratorError(f"{command.name} did not finish within {timeout:.0f} s (status {status:#x})")
            time.sleep(self.poll_interval)

    # -- TrainingBackend --------------------------------------------------------------

    @property
    def lr_mult(self) -> int:
        return self._lr_mult

    @lr_mult.setter
    def lr_mult(self, value: int) -> None:
        self._refuse_training("set the learning rate")
        self.link.write_word(Space.REGS, Reg.LR_MULT, int(value))
        self._lr_mult = int(value)

    def train_steps(self, x: torch.Tensor, labels: torch.Tensor, steps: int) -> list[float]:
        """Run ``steps`` updates on the ``steps * samples_per_step`` samples, in order, on chip.

        Returns the mean baseline loss of every step (``LAST_LOSS / samples_per_step``,
        what the golden model's ``train_step`` returns). The samples of up to
        :attr:`max_steps_per_call` steps go over in one burst; the accelerator then runs
        them one ``TRAIN`` command (``STEPS = 1``) at a time, because ``LAST_LOSS`` holds
        only the last step's loss.
        """
        self._refuse_training("TRAIN")
        s = self.samples_per_step
        if x.shape[0] != steps * s:
            raise ValueError(f"{steps} steps take {steps * s} samples, got {x.shape[0]}")
        losses: list[float] = []
        for start in range(0, steps, self.max_steps_per_call):
            k = min(self.max_steps_per_call, steps - start)
            self._load_samples(x[start * s:(start + k) * s], labels[start * s:(start + k) * s])
            self._write_regs({Reg.SAMPLE_COUNT: k * s, Reg.SAMPLE_CURSOR: 0, Reg.STEPS: 1})
            for _ in range(k):  # the sample cursor advances through the buffer step by step
                self._before_step(self.step + 1)
                self._run(Command.TRAIN, timeout=60 + 0.5 * s)
                losses.append(self.link.read_word(Space.REGS, Reg.LAST_LOSS) / s)
                self.step += 1
                self._after_step(self.step)
        return losses

    def _refuse_training(self, what: str) -> None:
        """Raise :class:`AcceleratorError` on an inference-only build."""
        if not self.training:
            raise AcceleratorError(
                f"cannot {what}: {self.cfg.name} was generated inference-only (hardware.training: "
                f"false), without the loss, correlation and update units; train it on a build with "
                f"hardware.training: true (the default), or with --backend golden")

    def _before_step(self, step: int) -> None:
        """Called before step ``step`` (1-based) is sent; a subclass may act on it."""

    def _after_step(self, step: int) -> None:
        """Called after step ``step`` finished."""

    def train_step(self, x: torch.Tensor, labels: torch.Tensor) -> float:
        return self.train_steps(x, labels, 1)[0]

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        depth, classes = self.geo.sample_depth, self.geo.classes
        out = []
        for start in range(0, x.shape[0], depth):
            chunk = x[start:start + depth]
            self._load_samples(chunk, None)
            self.link.write_word(Space.REGS, Reg.INFER_COUNT, chunk.shape[0])
            self._run(Command.INFER, timeout=60 + 0.1 * chunk.shape[0])
            scores = self.link.read_words(Space.OUTPUTS, 0, chunk.shape[0] * classes, dtype=np.int32)
            out.append(torch.from_numpy(scores.astype(np.int64)).view(-1, classes))
        return torch.cat(out)

    def counters(self) -> Counters:
        """Read the cycle, step, stall and MAC-busy counters."""
        read = lambda reg: self.link.read_word(Space.REGS, reg)  # noqa: E731
        cycles = read(Reg.CYCLES_LO)
        cycles |= read(Reg.CYCLES_HI) << 32
        mac = read(Reg.MAC_BUSY_LO)
        mac |= read(Reg.MAC_BUSY_HI) << 32
        return Counters(cycles, read(Reg.STEPS_DONE), read(Reg.STALLS), mac, read(Reg.LAST_LOSS))

    def clear_counters(self) -> None:
        """Zero the counters (immediate: the command does not run, so DONE is not involved)."""
        self.link.write_word(Space.REGS, Reg.COMMAND, int(Command.CLEAR_COUNTERS))

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": "integer",
            "weights": self._read_matrices(Space.WEIGHTS),
            "momentum": self._read_matrices(Space.MOMENTUM) if self.geo.momentum and self.training else None,
            "step": self.link.read_word(Space.REGS, Reg.STEP) if self.training else self.step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "integer":
            raise ValueError("not an integer-model state")
        self._write_matrices(Space.WEIGHTS, state["weights"])
        if self.geo.momentum and self.training and state.get("momentum") is not None:
            self._write_matrices(Space.MOMENTUM, state["momentum"])
        if self.training:
            self.link.write_word(Space.REGS, Reg.STEP, int(state["step"]))
        self.step = int(state["step"])

    def close(self) -> None:
        self.link.close()
