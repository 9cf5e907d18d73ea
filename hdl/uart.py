"""A UART PHY (8 data bits, no parity, 1 stop bit) with byte streams on the inside.

Used on boards to carry the host link (:class:`~perturbo.hdl.hostlink.HostLink`). A UART
cannot stall its sender, so the receiver's ``o`` stream holds one byte: a byte that
arrives while the previous one still waits is dropped and reported on ``overrun``.
:class:`UART` puts a FIFO (``rx_fifo_depth``) after the receiver for consumers that
sometimes wait, as HostLink does while it answers a frame.

:class:`SerialAdapter` models the host's side of the cable in gateware (a second UART,
as a USB-serial adapter): the co-simulation of a board top puts it between the
Verilator harness's byte streams and the board top's pins, so that every byte crosses
the ``rx``/``tx`` lines bit by bit.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

__all__ = ["UART", "SerialAdapter", "UARTRx", "UARTTx", "uart_divisor"]


def uart_divisor(clk_freq: float, baud: float, *, tolerance: float = 0.02) -> int:
    """Clock cycles per bit for ``baud`` at ``clk_freq``, rounded.

    Raises
    ------
    ValueError
        The divisor is below 4, or the rounded divisor misses ``baud`` by more than
        ``tolerance`` (a relative error).
    """
    if clk_freq <= 0 or baud <= 0:
        raise ValueError(f"clock and baud rate must be positive, not {clk_freq!r} and {baud!r}")
    divisor = round(clk_freq / baud)
    if divisor < 4:
        raise ValueError(f"a {clk_freq} Hz clock is too slow for {baud} baud "
                         f"(divisor {clk_freq / baud:.2f}; at least 4 needed)")
    error = abs(clk_freq / divisor - baud) / baud
    if error > tolerance:
        raise ValueError(f"{baud} baud from a {clk_freq} Hz clock is off by {error:.1%} "
                         f"(divisor {divisor}); at most {tolerance:.0%} allowed")
    return divisor


def _check_divisor(divisor: object) -> int:
    if not isinstance(divisor, int) or isinstance(divisor, bool) or divisor < 4:
        raise TypeError(f"divisor must be an integer of at least 4, not {divisor!r}")
    return divisor


class UARTTx(wiring.Component):
    """UART transmitter: one start bit, 8 data bits LSB first, one stop bit.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit (at least 4).

    Members
    -------
    i : ``In(stream.Signature(8))``
        Bytes to send; ready while the transmitter is idle.
    tx : ``Out(1)``
        The serial line (idles high).
    """

    def __init__(self, divisor: int) -> None:
        self.divisor = _check_divisor(divisor)
        super().__init__({"i": In(stream.Signature(8)), "tx": Out(1, init=1)})

    def elaborate(self, platform) -> Module:
        m = Module()
        shreg = Signal(10, init=0x3FF)  # stop, data[7:0], start: shifted out LSB first
        bits = Signal(range(11))
        timer = Signal(range(self.divisor))
        busy = Signal()
        m.d.comb += [self.i.ready.eq(~busy), self.tx.eq(shreg[0])]
        with m.If(~busy), m.If(self.i.valid):
            m.d.sync += [
                shreg.eq(Cat(Const(0, 1), self.i.payload, Const(1, 1))),
                bits.eq(10),
                timer.eq(self.divisor - 1),
                busy.eq(1),
            ]
        with m.Elif(timer == 0):
            m.d.sync += [
                shreg.eq(Cat(shreg[1:], Const(1, 1))),
                bits.eq(bits - 1),
                timer.eq(self.divisor - 1),
            ]
            with m.If(bits == 1):
                m.d.sync += busy.eq(0)
        with m.Else():
            m.d.sync += timer.eq(timer - 1)
        return m


class UARTRx(wiring.Component):
    """UART receiver: 2-FF synchroniser, start-bit check, mid-bit sampling.

    A falling edge starts a byte; the start bit is checked half a bit later (a shorter
    glitch is ignored) and every data bit and the stop bit are sampled in the middle.
    A byte whose stop bit is low is dropped, pulses ``error`` and the receiver waits for
    the line to go high again (a break).  ``divisor``: as for :class:`UARTTx`.

    Members
    -------
    rx : ``In(1)``
        The serial line (asynchronous; idles high).
    o : ``Out(stream.Signature(8))``
        Received bytes; ``valid`` is held until ``ready``.
    error : ``Out(1)``
        One-cycle pulse: framing error (stop bit low).
    overrun : ``Out(1)``
        One-cycle pulse: a byte arrived while ``o`` still held the last one; it was dropped.
    """

    def __init__(self, divisor: int) -> None:
        self.divisor = _check_divisor(divisor)
        super().__init__({
            "rx": In(1, init=1),
            "o": Out(stream.Signature(8)),
            "error": Out(1),
            "overrun": Out(1),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        line = Signal(init=1)
        m.submodules.sync = FFSynchronizer(self.rx, line, init=1, stages=2)
        timer = Signal(range(self.divisor))
        bits = Signal(range(8))
        shreg = Signal(8)

        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        m.d.sync += [self.error.eq(0), self.overrun.eq(0)]

        with m.FSM(name="uart_rx"):
            with m.State("IDLE"), m.If(~line):
                m.d.sync += timer.eq(self.divisor // 2 - 1)
                m.next = "START"
            with m.State("START"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(~line):
                    m.d.sync += [timer.eq(self.divisor - 1), bits.eq(0)]
                    m.next = "DATA"
                with m.Else():
                    m.next = "IDLE"  # a glitch, not a start bit
            with m.State("DATA"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Else():
                    m.d.sync += [
                        shreg.eq(Cat(shreg[1:], line)),
                        bits.eq(bits + 1),
                        timer.eq(self.divisor - 1),
                    ]
                    with m.If(bits == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(line):
                    with m.If(self.o.valid & ~self.o.ready):
                        m.d.sync += self.overrun.eq(1)
                    with m.Else():
                        m.d.sync += [self.o.payload.eq(shreg), self.o.valid.eq(1)]
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += self.error.eq(1)
                    m.next = "BREAK"
            with m.State("BREAK"), m.If(line):
                m.next = "IDLE"
        return m


class UART(wiring.Component):
    """A UART receiver and transmitter at ``baud`` from a ``clk_freq`` clock.

    Parameters
    ----------
    clk_freq : float
        Frequency of the ``sync`` clock in Hz.
    baud : float
        Bits per second.
    divisor : int, optional
        Cycles per bit; overrides ``clk_freq`` and ``baud`` (for simulation).
    rx_fifo_depth : int
        Bytes buffered between the receiver and ``o`` (0: only the receiver's one byte).

    Members
    -------
    rx : ``In(1)``
        Serial input line.
    tx : ``Out(1)``
        Serial output line.
    i : ``In(stream.Signature(8))``
        Bytes to send.
    o : ``Out(stream.Signature(8))``
        Bytes received (up to ``rx_fifo_depth + 1`` wait for ``ready``; see the module
        docstring).
    rx_error : ``Out(1)``
        Framing-error pulse.
    rx_overrun : ``Out(1)``
        Overrun pulse.
    """

    def __init__(self, clk_freq: float | None = None, baud: float | None = None, *,
                 divisor: int | None = None, rx_fifo_depth: int = 16) -> None:
        if divisor is None:
            if clk_freq is None or baud is None:
                raise TypeError("give clk_freq and baud, or divisor")
            divisor = uart_divisor(clk_freq, baud)
        self.divisor = _check_divisor(divisor)
        if not isinstance(rx_fifo_depth, int) or rx_fifo_depth < 0:
            raise TypeError(f"rx_fifo_depth must be a non-negative integer, not {rx_fifo_depth!r}")
        self.rx_fifo_depth = rx_fifo_depth
        super().__init__({
            "rx": In(1, init=1),
            "tx": Out(1, init=1),
            "i": In(stream.Signature(8)),
            "o": Out(stream.Signature(8)),
            "rx_error": Out(1),
            "rx_overrun": Out(1),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.receiver = receiver = UARTRx(self.divisor)
        m.submodules.transmitter = transmitter = UARTTx(self.divisor)
        m.d.comb += [
            receiver.rx.eq(self.rx),
            self.tx.eq(transmitter.tx),
            self.rx_error.eq(receiver.error),
            self.rx_overrun.eq(receiver.overrun),
        ]
        wiring.connect(m, wiring.flipped(self.i), transmitter.i)
        if self.rx_fifo_depth:
            m.submodules.rx_fifo = fifo = SyncFIFOBuffered(width=8, depth=self.rx_fifo_depth)
            wiring.connect(m, receiver.o, fifo.w_stream)
            wiring.connect(m, fifo.r_stream, wiring.flipped(self.o))
        else:
            wiring.connect(m, receiver.o, wiring.flipped(self.o))
        return m


class SerialAdapter(wiring.Component):
    """A device with UART pins, reached through a host-side UART: byte streams outside, bits inside.

    The host's serial adapter in gateware: bytes from the host (``rx``) leave this UART's
    transmitter on a line into the device's ``rx`` pin; the device's ``tx`` pin feeds this
    UART's receiver, whose bytes go to the host (``tx``). Both ends run at ``divisor``
    cycles per bit from the one simulated clock, so the line has no rate error; what the
    co-simulation checks is the device's PHY, framing and flow over real bit timing.

    Parameters
    ----------
    device : wiring.Component
        Has members ``rx`` (``In(1)``) and ``tx`` (``Out(1)``): for instance a
        :class:`~perturbo.hdl.hostlink.LinkedTarget` with a :class:`UART`.
    divisor : int
        Cycles per bit of the adapter (the device's UART must use the same).
    rx_fifo_depth : int
        Bytes the adapter buffers from the device while the host side waits.  The
        Verilator harness takes a byte per cycle, so this only matters when the host stops
        reading for a long time; then, as on a real adapter, bytes are lost.

    Members
    -------
    rx : ``In(stream.Signature(8))``
        Bytes from the host, sent on the line as fast as the UART allows (``ready`` while
        the transmitter is idle).
    tx : ``Out(stream.Signature(8))``
        Bytes the device sent, as received from its line.
    """

    def __init__(self, device: wiring.Component, *, divisor: int, rx_fifo_depth: int = 16) -> None:
        members = getattr(device, "signature", wiring.Signature({})).members
        if not ("rx" in members and "tx" in members and members["rx"].flow == wiring.In
                and members["tx"].flow == wiring.Out and members["rx"].is_port
                and members["tx"].is_port and members["rx"].shape == 1 and members["tx"].shape == 1):
            raise TypeError(f"device must be a component with 1-bit rx (In) and tx (Out) pins, not {device!r}")
        self.device = device
        self.divisor = _check_divisor(divisor)
        self.adapter = UART(divisor=divisor, rx_fifo_depth=rx_fifo_depth)
        super().__init__({"rx": In(stream.Signature(8)), "tx": Out(stream.Signature(8))})

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.device = device = self.device
        m.submodules.adapter = adapter = self.adapter
        wiring.connect(m, wiring.flipped(self.rx), adapter.i)
        wiring.connect(m, adapter.o, wiring.flipped(self.tx))
        m.d.comb += [device.rx.eq(adapter.tx), adapter.rx.eq(device.tx)]
        return m
