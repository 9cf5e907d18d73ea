"""The accelerator on the Verilator co-simulation, as a training backend.

:class:`VerilatorBackend` starts the co-simulation of ``LinkedTarget(Accelerator(cfg))``
and connects a :class:`~perturbo.host.accelerator.AcceleratorBackend` (the driver a
board gets) to it over ``socket://127.0.0.1:PORT``.  :func:`serial_cosim` co-simulates
the board top itself, UART pins and all, behind a pseudo-terminal: the serial
backend's path, without a board.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from perturbo.cache import cache_root, cached_text, digest
from perturbo.config import Config
from perturbo.hdl.geometry import config_hash
from perturbo.hdl.registers import config_values
from perturbo.host.accelerator import AcceleratorBackend
from perturbo.host.link import Link

from .cosim import VerilatorSim
from .top import harness_verilog

#: Top module name of the co-simulated accelerator with its host link.
COSIM_TOP = "perturbo_cosim"
#: Top module name of the co-simulated board top behind a host-side UART (:func:`serial_verilog`).
SERIAL_TOP = "perturbo_serial"
#: Default cycles per bit of the serial co-simulation: a byte takes 81 cycles on the line,
#: about the ratio of a 12 MHz iCEBreaker to 1.5 Mbaud, and training stays quick.
SERIAL_DIVISOR = 8


def _rtl_key(cfg: Config) -> str:
    """What generated Verilog depends on in ``cfg``: :func:`config_hash` (the generation
    parameters, which the ``CONFIG_HASH`` register holds) and every ``hardware`` key, since
    some change the logic but no value the host sees (``hash_stages_per_register``,
    ``lane_products``, ``update_products``), so ``CONFIG_HASH`` leaves them out."""
    return f"{config_hash(cfg):08x}-{digest(cfg.hardware.model_dump_json())}"


def _hdl_fingerprint() -> str:
    """Hash of the RTL generator's sources: a change to hdl/ (or to the harness's top,
    sim/top.py) invalidates cached Verilog."""
    from perturbo import hdl

    sources = [*sorted(Path(hdl.__file__).parent.glob("*.py")), Path(__file__).with_name("top.py")]
    return digest(*(path.name.encode() + path.read_bytes() for path in sources))


def cosim_verilog(cfg: Config, *, overlap: bool = True, emit_src: bool = False) -> str:
    """Verilog of ``LinkedTarget(Accelerator(cfg, overlap=overlap, config_resets=False))`` in a
    :class:`~.top.HarnessTop` as :data:`COSIM_TOP`, cached per generation parameters and
    hardware keys (:func:`_rtl_key`, all that this Verilog depends on: its run registers
    reset to fixed values, and the driver writes them) and hdl/ sources.  ``emit_src``:
    keep Amaranth's ``src`` attributes (the Python line of every signal), for waveforms;
    they change no logic but do change the text, and with it the build cache key."""
    variant = ("" if overlap else "-serial") + ("-src" if emit_src else "")
    path = cache_root() / "verilog" / f"{COSIM_TOP}-{_rtl_key(cfg)}{variant}-{_hdl_fingerprint()}.v"

    def generate() -> str:
        from perturbo.hdl.accelerator import Accelerator
        from perturbo.hdl.hostlink import LinkedTarget

        return harness_verilog(LinkedTarget(Accelerator(cfg, overlap=overlap, config_resets=False)),
                               COSIM_TOP, emit_src=emit_src)

    return cached_text(path, generate)


def serial_verilog(cfg: Config, *, divisor: int = SERIAL_DIVISOR, rx_fifo_depth: int = 16) -> str:
    """Verilog of the board top's accelerator, host link and UART (:func:`perturbo.boards.top.board_link`)
    behind a host-side UART (:class:`~perturbo.hdl.uart.SerialAdapter`), as :data:`SERIAL_TOP`;
    cached per config (the generation parameters and hardware keys and, as on a board, the run registers' resets),
    UART parameters and hdl/ sources."""
    resets = digest(repr(sorted((reg.name, value) for reg, value in config_values(cfg).items())))
    path = (cache_root() / "verilog" / f"{SERIAL_TOP}-{_rtl_key(cfg)}-{resets}-d{divisor}"
            f"-f{rx_fifo_depth}-{_hdl_fingerprint()}.v")

    def generate() -> str:
        from perturbo.boards.top import board_link
        from perturbo.hdl.uart import SerialAdapter

        top = SerialAdapter(board_link(cfg, divisor=divisor, rx_fifo_depth=rx_fifo_depth), divisor=divisor)
        return harness_verilog(top, SERIAL_TOP)

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
    Python source locations) and dump the cycles of those training steps (one ``TRAIN``
    command per step, so that the window is exact); without it the untraced model runs, as
    fast as ever.  ``refill``: how the driver feeds it (:data:`~perturbo.host.accelerator.REFILL_MODES`).
    """

    def __init__(self, cfg: Config, *, weights: list[torch.Tensor] | None = None, poll_cycles: int = 1024,
                 overlap: bool = True, waves: WaveWindow | None = None, refill: str | None = None) -> None:
        self.waves = waves
        self._tracing = False
        verilog = cosim_verilog(cfg, overlap=overlap, emit_src=waves is not None)
        self.sim = VerilatorSim(verilog, COSIM_TOP, poll_cycles=poll_cycles,
                                trace=waves.path if waves is not None else None)
        self.sim.start()
        try:
            super().__init__(cfg, Link(self.sim.url, timeout=10.0), weights=weights, poll_interval=0.0005,
                             refill="step" if waves is not None else refill)
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
