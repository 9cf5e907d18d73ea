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
import itertools
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from perturbo.backend import BackendFailure
from perturbo.config import Config
from perturbo.golden.integer import init_weights
from perturbo.hdl.bus import ACCEL_ID, Command, Reg, Space, Status
from perturbo.hdl.geometry import Geometry, config_hash
from perturbo.hdl.registers import config_values
from perturbo.limits import SAMPLES_PER_WORD, ring_steps

from .link import Link

__all__ = ["AcceleratorBackend", "AcceleratorError", "Counters", "REFILL_MODES"]

#: How :meth:`AcceleratorBackend.train_steps` feeds the accelerator (``refill=``):
#: ``"stream"`` one ``TRAIN_STREAM`` run per call, the sample ring refilled while it trains
#: and the losses read from the loss record as it goes; ``"batch"`` as many steps as the
#: sample buffer holds per ``TRAIN`` command, their losses read afterwards; ``"step"`` one
#: ``TRAIN`` of one step at a time, its loss from ``LAST_LOSS`` (builds without the loss
#: record, and traced steps).
REFILL_MODES = ("stream", "batch", "step")
#: Longest sleep (s) between two ``STEP`` reads of a streamed run while nothing is due: a
#: digits ring of 63 steps lasts 13 ms at 50 MHz and seconds in the co-simulation.
MAX_STREAM_POLL = 0.05


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
    refill : str, optional
        One of :data:`REFILL_MODES`; default the fastest the build offers: ``"stream"`` with
        the loss record (``hardware.streaming``) and a sample buffer of more than one
        step, else ``"step"``.
    """

    def __init__(self, cfg: Config, link: Link, *, weights: list[torch.Tensor] | None = None,
                 poll_interval: float = 0.002, refill: str | None = None) -> None:
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
        self.samples_per_step = cfg.rule.samples_per_step
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
        #: ``SAMPLE_FILL`` writes of streamed runs (each after one ``STEP`` read)
        self.grants = 0
        #: the step counter as the host tracks it (the next step run is ``step + 1``)
        self.step = 0
        #: steps the sample buffer holds: a ``TRAIN`` command's worth (``"batch"``), or, with a
        #: slot left free, what a ``TRAIN_STREAM`` run may be granted ahead (``"stream"``;
        #: within the loss record, so that no loss is overwritten before it is read)
        self.buffer_steps = self.geo.sample_depth // self.samples_per_step
        self.ring_steps = ring_steps(self.geo.sample_depth, self.samples_per_step, self.geo.loss_depth)
        #: steps a streamed run refills at a time (a quarter of the ring)
        self.refill_steps = max(1, self.ring_steps // 4)
        self.refill = ("stream" if self.geo.streaming and self.ring_steps >= 1 else "step") if refill is None \
            else refill

    @property
    def refill(self) -> str:
        """How :meth:`train_steps` feeds the accelerator (:data:`REFILL_MODES`); settable between calls."""
        return self._refill

    @refill.setter
    def refill(self, mode: str) -> None:
        if mode not in REFILL_MODES:
            raise ValueError(f"refill must be one of {', '.join(REFILL_MODES)}, not {mode!r}")
        if mode == "stream" and (not self.geo.streaming or self.ring_steps < 1):
            raise ValueError("refill='stream' needs hardware.streaming and a sample buffer of more than one step")
        if mode == "batch" and not self.geo.streaming:
            raise ValueError("refill='batch' needs the loss record (hardware.streaming)")
        self._refill = mode
        #: steps one :meth:`train_steps` call may run
        # (streamed: twice the ring, so that the first quarter, loaded before the run starts,
        # is an eighth of the call, and a checkpoint or a Ctrl-C still comes between calls
        # within a few hundred steps)
        self.max_steps_per_call = {"stream": 2 * self.ring_steps,
                                   "batch": max(1, min(self.buffer_steps, self.geo.loss_depth)),
                                   "step": max(1, self.buffer_steps)}[mode]

    # -- registers and memories -----------------------------------------------------------

    def _write_regs(self, values: dict[Reg, int]) -> None:
        for reg, value in values.items():
            self.link.write_word(Space.REGS, reg, int(value))

    def _wide(self, space: Space) -> bool:
        """Whether ``space``'s words are wider than the bus word (G with ``grad_bits`` > 32)."""
        return space in (Space.GRADS, Space.MOMENTUM) and self.geo.grad_bits > 32

    def _write_matrices(self, space: Space, mats: list[torch.Tensor]) -> None:
        image = self.geo.to_image(mats)
        if not self._wide(space):
            self.link.write_words(space, 0, image)
            return
        # a word takes its bits 32.. from WRITE_HIGH, which holds between writes: one
        # WRITE_HIGH per run of words with the same high half (all zeros: a single run)
        high = image >> 32
        starts = [0, *np.flatnonzero(high[1:] != high[:-1]) + 1, image.size]
        for first, end in itertools.pairwise(starts):
            self.link.write_word(Space.REGS, Reg.WRITE_HIGH, int(high[first]) & 0xFFFF_FFFF)
            self.link.write_words(space, first, image[first:end] & 0xFFFF_FFFF)
        if high[-1] != 0:
            self.link.write_word(Space.REGS, Reg.WRITE_HIGH, 0)

    def _read_matrices(self, space: Space) -> list[torch.Tensor]:
        words = self.geo.rows * self.geo.lanes
        if not self._wide(space):
            image = self.link.read_words(space, 0, words, dtype=np.int32).astype(np.int64)
        else:
            # READ_HIGH holds bits 32.. of the last word read only: two requests a word
            image = np.empty(words, dtype=np.int64)
            for addr in range(words):
                low = self.link.read_word(space, addr)
                high = int(self.link.read_words(Space.REGS, Reg.READ_HIGH, 1, dtype=np.int32)[0])
                image[addr] = high << 32 | low
        return [torch.from_numpy(w) for w in self.geo.from_image(image)]

    def _load_samples(self, x: torch.Tensor, labels: torch.Tensor | None) -> None:
        self.link.write_words(Space.SAMPLES, 0, self.geo.sample_image(x))
        if labels is not None:
            self.link.write_words(Space.LABELS, 0, labels.to(torch.int64).numpy())

    def _read_losses(self, first: int, steps: int) -> list[int]:
        """The loss record's sums of steps ``first .. first + steps - 1`` (at most ``loss_depth``)."""
        depth, out = self.geo.loss_depth, []
        while steps:
            addr = first % depth
            n = min(steps, depth - addr)
            out += self.link.read_words(Space.LOSSES, addr, n).tolist()
            first, steps = first + n, steps - n
        return out

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

        Returns the mean baseline loss of every step (its recorded sum ``/ samples_per_step``,
        what the golden model's ``train_step`` returns), fed as :attr:`refill` says
        (:data:`REFILL_MODES`).
        """
        self._refuse_training("TRAIN")
        s = self.samples_per_step
        if x.shape[0] != steps * s:
            raise ValueError(f"{steps} steps take {steps * s} samples, got {x.shape[0]}")
        if steps == 0:
            return []
        if self.refill == "stream":
            sums = self._train_stream(x, labels, steps)
        else:
            sums = []
            for start in range(0, steps, self.max_steps_per_call):
                k = min(self.max_steps_per_call, steps - start)
                self._load_samples(x[start * s:(start + k) * s], labels[start * s:(start + k) * s])
                sums += self._train_loaded(k)
        return [v / s for v in sums]

    def _train_loaded(self, k: int) -> list[int]:
        """The ``k`` steps whose samples fill the buffer from slot 0; their loss sums."""
        s = self.samples_per_step
        if self.refill == "batch":  # one command; the losses from the record afterwards
            self._write_regs({Reg.SAMPLE_COUNT: k * s, Reg.SAMPLE_CURSOR: 0, Reg.STEPS: k})
            first = self.step
            self._before_step(first + 1)
            self._run(Command.TRAIN, timeout=60 + 0.5 * s * k)
            self.step += k
            self._after_step(self.step)
            return self._read_losses(first, k)
        sums = []
        self._write_regs({Reg.SAMPLE_COUNT: k * s, Reg.SAMPLE_CURSOR: 0, Reg.STEPS: 1})
        for _ in range(k):  # the sample cursor advances through the buffer step by step
            self._before_step(self.step + 1)
            self._run(Command.TRAIN, timeout=60 + 0.5 * s)
            sums.append(self.link.read_word(Space.REGS, Reg.LAST_LOSS))
            self.step += 1
            self._after_step(self.step)
        return sums

    def _train_stream(self, x: torch.Tensor, labels: torch.Tensor, steps: int) -> list[int]:
        """One ``TRAIN_STREAM`` run of ``steps`` steps: the sample ring (every slot of the
        buffer) is refilled, a step's samples at a time, while the accelerator trains on the
        samples granted before; each pass of the loop reads ``STEP``, the new steps' losses,
        then grants what the ring has room for (docs/protocol.md, "Refill while training")."""
        s, slots, per_sample = self.samples_per_step, self.geo.sample_depth, self.geo.sample_stride // SAMPLES_PER_WORD
        image = self.geo.sample_image(x)
        label_words = labels.to(torch.int64).numpy()
        first = self.step
        granted = 0  # steps whose samples are in the ring (SAMPLE_FILL = granted * s % slots)

        def grant(upto: int) -> None:
            nonlocal granted
            a, end = granted * s, upto * s
            while a < end:  # (split where the ring wraps)
                slot = a % slots
                b = min(end, a + slots - slot)
                self.link.write_words(Space.SAMPLES, slot * per_sample, image[a * per_sample:b * per_sample])
                self.link.write_words(Space.LABELS, slot, label_words[a:b])
                a = b
            granted = upto
            self.link.write_word(Space.REGS, Reg.SAMPLE_FILL, end % slots)
            self.grants += 1

        self._write_regs({Reg.SAMPLE_COUNT: slots, Reg.SAMPLE_CURSOR: 0, Reg.SAMPLE_FILL: 0, Reg.STEPS: steps})
        grant(min(steps, self.refill_steps))  # the rest of the ring goes over while these run
        self._before_step(first + 1)
        self.link.write_word(Space.REGS, Reg.COMMAND, int(Command.TRAIN_STREAM))
        sums: list[int] = []
        timeout = 60 + 0.5 * s
        try:
            deadline = time.monotonic() + timeout
            idle = self.poll_interval
            while len(sums) < steps:
                done = (self.link.read_word(Space.REGS, Reg.STEP) - first) & 0xFFFF_FFFF
                self.status_polls += 1
                if done > len(sums):
                    sums += self._read_losses(first + len(sums), done - len(sums))
                    self.step = first + done
                    self._after_step(self.step)
                    deadline = time.monotonic() + timeout
                # the steps granted stay within ring_steps of those whose losses are read; a
                # quarter of the ring at a time, so that each refill is a long burst
                if granted < steps and done + self.ring_steps >= min(steps, granted + self.refill_steps):
                    grant(min(steps, done + self.ring_steps))
                    idle = self.poll_interval
                elif len(sums) < steps:
                    if time.monotonic() > deadline:
                        raise AcceleratorError(f"TRAIN_STREAM made no step within {timeout:.0f} s "
                                               f"({done} of {steps} done)")
                    # the ring holds many steps: poll less and less often while nothing is
                    # due (each poll costs the link, and the co-simulation the CPU it shares)
                    time.sleep(idle)
                    idle = min(2 * idle, MAX_STREAM_POLL)
            self._wait_done(Command.TRAIN_STREAM, timeout)
        except KeyboardInterrupt:
            with contextlib.suppress(Exception):  # leave the accelerator usable, its state whole
                self._abort(timeout)
                self.step = self.link.read_word(Space.REGS, Reg.STEP)
            raise
        return sums

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
        # reading a low word latches its high word (absent with hardware.counter_bits 32)
        wide = self.cfg.hardware.counter_bits > 32
        cycles = read(Reg.CYCLES_LO)
        cycles |= read(Reg.CYCLES_HI) << 32 if wide else 0
        mac = read(Reg.MAC_BUSY_LO)
        mac |= read(Reg.MAC_BUSY_HI) << 32 if wide else 0
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
