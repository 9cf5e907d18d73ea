"""The accelerator as a training backend: the same host code for a board and the co-simulation.

:class:`AcceleratorBackend` implements :class:`perturbo.backend.TrainingBackend` over a
:class:`~perturbo.sim.driver.Link` (any pyserial URL).  :class:`VerilatorBackend` starts
the Verilator co-simulation of ``LinkedTarget(Accelerator(cfg))`` and connects an
:class:`AcceleratorBackend` to it over ``socket://127.0.0.1:PORT``; a board is
``AcceleratorBackend(cfg, Link("/dev/ttyUSB1", baudrate=...))``.  :func:`serial_cosim`
co-simulates the board top itself, UART pins and all, behind a pseudo-terminal: the
serial backend's path, without a board.

Its state dicts are the golden :class:`~perturbo.golden.integer.IntegerModel`'s, so a
checkpoint written on one backend resumes on the other.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from perturbo.backend import BackendFailure
from perturbo.cache import cache_root, cached_text, digest
from perturbo.config import Config
from perturbo.golden.integer import init_weights
from perturbo.hdl.bus import ACCEL_ID, Command, Reg, Space, Status
from perturbo.hdl.geometry import Geometry, config_hash
from perturbo.hdl.registers import config_values

from .cosim import VerilatorSim
from .driver import Link

#: Top module name of the co-simulated accelerator with its host link.
COSIM_TOP = "perturbo_cosim"
#: Top module name of the co-simulated board top behind a host-side UART (:func:`serial_verilog`).
SERIAL_TOP = "perturbo_serial"
#: Default cycles per bit of the serial co-simulation: a byte takes 81 cycles on the line,
#: about the ratio of a 12 MHz iCEBreaker to 1.5 Mbaud, and training stays quick.
SERIAL_DIVISOR = 8


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
        self.samples_per_step = rule.tau_theta * rule.batch
        if link.read_word(Space.REGS, Reg.STATUS) & Status.BUSY:
            # an earlier session left a command running, and every write is refused until
            # it stops: stop it (the state it leaves is overwritten below)
            print("perturbo: note: the accelerator was still running a command from an earlier "
                  "session; aborted it", file=sys.stderr)
            self._abort(timeout=60 + 0.5 * self.samples_per_step)
        # every register that carries a configuration value, from the one register map
        self._write_regs({**config_values(cfg), Reg.STEP: 0})
        self._lr_mult = rule.lr_mult
        self._write_matrices(Space.WEIGHTS, weights if weights is not None else init_weights(cfg))
        if self.geo.momentum:
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
            "momentum": self._read_matrices(Space.MOMENTUM) if self.geo.momentum else None,
            "step": self.link.read_word(Space.REGS, Reg.STEP),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "integer":
            raise ValueError("not an integer-model state")
        self._write_matrices(Space.WEIGHTS, state["weights"])
        if self.geo.momentum and state.get("momentum") is not None:
            self._write_matrices(Space.MOMENTUM, state["momentum"])
        self.link.write_word(Space.REGS, Reg.STEP, int(state["step"]))
        self.step = int(state["step"])

    def close(self) -> None:
        self.link.close()


def _hdl_fingerprint() -> str:
    """Hash of the RTL generator's sources: a change to hdl/ invalidates cached Verilog."""
    from perturbo import hdl

    return digest(*(path.name.encode() + path.read_bytes()
                    for path in sorted(Path(hdl.__file__).parent.glob("*.py"))))


def cosim_verilog(cfg: Config, *, overlap: bool = True, emit_src: bool = False) -> str:
    """Verilog of ``LinkedTarget(Accelerator(cfg, overlap=overlap))`` as :data:`COSIM_TOP`, cached
    per config and hdl/ sources.  ``emit_src``: keep Amaranth's ``src`` attributes (the Python
    line of every signal), for waveforms; they change no logic but do change the text, and
    with it the build cache key."""
    variant = ("" if overlap else "-serial") + ("-src" if emit_src else "")
    path = cache_root() / "verilog" / f"{COSIM_TOP}-{config_hash(cfg):08x}{variant}-{_hdl_fingerprint()}.v"

    def generate() -> str:
        from amaranth.back import verilog

        from perturbo.hdl.accelerator import Accelerator
        from perturbo.hdl.hostlink import LinkedTarget

        return verilog.convert(LinkedTarget(Accelerator(cfg, overlap=overlap)), name=COSIM_TOP,
                               emit_src=emit_src)

    return cached_text(path, generate)


def serial_verilog(cfg: Config, *, divisor: int = SERIAL_DIVISOR, rx_fifo_depth: int = 16) -> str:
    """Verilog of the board top's accelerator, host link and UART (:func:`perturbo.boards.top.board_link`)
    behind a host-side UART (:class:`~perturbo.hdl.uart.SerialAdapter`), as :data:`SERIAL_TOP`;
    cached per config, UART parameters and hdl/ sources."""
    path = (cache_root() / "verilog"
            / f"{SERIAL_TOP}-{config_hash(cfg):08x}-d{divisor}-f{rx_fifo_depth}-{_hdl_fingerprint()}.v")

    def generate() -> str:
        from amaranth.back import verilog

        from perturbo.boards.top import board_link
        from perturbo.hdl.uart import SerialAdapter

        top = SerialAdapter(board_link(cfg, divisor=divisor, rx_fifo_depth=rx_fifo_depth), divisor=divisor)
        return verilog.convert(top, name=SERIAL_TOP, emit_src=False)

    return cached_text(path, generate)


def serial_cosim(cfg: Config, *, divisor: int = SERIAL_DIVISOR, rx_fifo_depth: int = 16, pty: bool = True,
                 poll_cycles: int = 1024) -> VerilatorSim:
    """The co-simulation of ``cfg``'s board top with its UART, not yet started.

    Every byte crosses the accelerator's ``rx``/``tx`` pins bit-serially at ``divisor``
    cycles per bit, sent and received by a second UART that plays the host's serial
    adapter.  With ``pty`` (the default) the simulation serves a pseudo-terminal
    (``sim.url`` is ``/dev/pts/<n>`` once started), which the serial backend opens as
    it would a board's port::

        with serial_cosim(cfg) as sim:
            backend = make_backend(cfg, "serial", port=sim.url)

    ``pty=False`` serves ``socket://127.0.0.1:PORT`` instead (one host, as
    :class:`VerilatorBackend`).
    """
    return VerilatorSim(serial_verilog(cfg, divisor=divisor, rx_fifo_depth=rx_fifo_depth), SERIAL_TOP,
                        poll_cycles=poll_cycles, pty=pty)


@dataclass(frozen=True)
class WaveWindow:
    """Training steps whose cycles the co-simulation dumps to an FST file.

    Attributes
    ----------
    first : int
        The first traced step, counted from 1 as the step counter counts.
    count : int
        How many steps are traced.
    path : Path
        The FST file.
    """

    first: int
    count: int
    path: Path

    @property
    def last(self) -> int:
        """The last traced step."""
        return self.first + self.count - 1


class VerilatorBackend(AcceleratorBackend):
    """:class:`AcceleratorBackend` on the Verilator co-simulation, started and stopped here.

    The verilated model is built once per configuration (and hdl/ sources) and cached.
    ``overlap=False`` builds the accelerator that runs each pass only after the previous
    correlation (a measurement of what the overlap buys, see :class:`~perturbo.hdl.sequencer.Sequencer`).
    ``waves``: run the traced model (a separate cached build, from Verilog that keeps its
    Python source locations) and dump the cycles of those training steps; without it the
    untraced model runs, as fast as ever.
    """

    def __init__(self, cfg: Config, *, weights: list[torch.Tensor] | None = None, poll_cycles: int = 1024,
                 overlap: bool = True, waves: WaveWindow | None = None) -> None:
        self.waves = waves
        self._tracing = False
        verilog = cosim_verilog(cfg, overlap=overlap, emit_src=waves is not None)
        self.sim = VerilatorSim(verilog, COSIM_TOP, poll_cycles=poll_cycles,
                                trace=waves.path if waves is not None else None)
        self.sim.start()
        try:
            super().__init__(cfg, Link(self.sim.url, timeout=10.0), weights=weights, poll_interval=0.0005)
        except BaseException:
            self.sim.stop()
            raise

    def _before_step(self, step: int) -> None:
        # a run resumed inside the window traces the rest of it
        if self.waves is not None and self.waves.first <= step <= self.waves.last and not self._tracing:
            self.sim.trace_on()
            self._tracing = True

    def _after_step(self, step: int) -> None:
        if self._tracing and step >= self.waves.last:
            self.sim.trace_off()
            self._tracing = False

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.sim.stop()
