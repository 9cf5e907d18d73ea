"""cocotb testbench of :class:`perturbo.hdl.uart.UART` (run by ``test_uart.py``).

The line is bit-banged from Python at a divisor read from ``UART_DIVISOR`` (the receive
FIFO depth is ``UART_FIFO``); the
transmitter's line is decoded by a Python model that also checks the bit period.
"""

from __future__ import annotations

import os
import random

import cocotb
from cocotb.triggers import ClockCycles, RisingEdge
from hdl_tbutil import Bench, send_bytes

DIVISOR = int(os.environ.get("UART_DIVISOR", "8"))
FIFO = int(os.environ.get("UART_FIFO", "0"))


class TB:
    """Clock, reset, line driver, transmitter decoder and receiver monitor."""

    def __init__(self, dut) -> None:
        self.dut = dut
        self.received: list[int] = []
        self.errors = 0
        self.overruns = 0
        self.hold_ready = False
        self.bench = Bench(dut)  # the clock, and every input driven
        dut.rx.value = 1  # the line idles high
        dut.o__ready.value = 1

    async def reset(self) -> None:
        await self.bench.reset()
        cocotb.start_soon(self._monitor())

    async def _monitor(self) -> None:
        dut = self.dut
        while True:
            dut.o__ready.value = 0 if self.hold_ready else 1
            await RisingEdge(dut.clk)
            if int(dut.o__valid.value) and int(dut.o__ready.value):
                self.received.append(int(dut.o__payload.value))
            self.errors += int(dut.rx_error.value)
            self.overruns += int(dut.rx_overrun.value)

    async def send_line(self, byte: int, *, period: float = DIVISOR, stop: int = 1) -> None:
        """Bit-bang one byte on ``rx``, each bit ``period`` cycles long (may be fractional)."""
        bits = [0] + [(byte >> i) & 1 for i in range(8)] + [stop]
        edges = [round(period * i) for i in range(len(bits) + 1)]
        for bit, start, end in zip(bits, edges, edges[1:], strict=False):
            self.dut.rx.value = bit
            await ClockCycles(self.dut.clk, end - start)
        self.dut.rx.value = 1

    async def send_stream(self, data: bytes) -> None:
        """Push ``data`` into the transmitter's stream."""
        await send_bytes(self.dut, "i", data)

    async def decode_tx(self, count: int) -> bytes:
        """Decode ``count`` bytes from the ``tx`` line, checking every bit lasts DIVISOR cycles."""
        dut = self.dut
        out = bytearray()
        for _ in range(count):
            while int(dut.tx.value):
                await RisingEdge(dut.clk)
            # measure the start bit, then sample every bit in its middle
            await ClockCycles(dut.clk, DIVISOR // 2)
            assert int(dut.tx.value) == 0, "start bit shorter than half a bit"
            byte = 0
            for i in range(8):
                await ClockCycles(dut.clk, DIVISOR)
                byte |= int(dut.tx.value) << i
            await ClockCycles(dut.clk, DIVISOR)
            assert int(dut.tx.value) == 1, "stop bit is not high"
            out.append(byte)
            # the line must stay high until the stop bit ends
            for _ in range(DIVISOR - DIVISOR // 2 - 1):
                await RisingEdge(dut.clk)
                assert int(dut.tx.value) == 1, "stop bit shorter than a bit"
        return bytes(out)


@cocotb.test()
async def test_tx_bytes_and_timing(dut) -> None:
    """The transmitter sends every byte back to back with exact bit periods."""
    tb = TB(dut)
    await tb.reset()
    data = bytes(range(256)) + bytes(random.Random(1).getrandbits(8) for _ in range(64))
    sender = cocotb.start_soon(tb.send_stream(data))
    got = await tb.decode_tx(len(data))
    await sender
    assert got == data


@cocotb.test()
async def test_rx_bytes_with_baud_error(dut) -> None:
    """The receiver takes bytes at the nominal rate and 3 % fast or slow."""
    tb = TB(dut)
    await tb.reset()
    rng = random.Random(2)
    expected = []
    for period in (DIVISOR, DIVISOR * 1.03, DIVISOR * 0.97):
        for _ in range(40):
            byte = rng.getrandbits(8)
            expected.append(byte)
            await tb.send_line(byte, period=period)
            if rng.random() < 0.3:
                await ClockCycles(dut.clk, rng.randint(1, 3 * DIVISOR))
    await ClockCycles(dut.clk, 2 * DIVISOR)
    assert tb.received == expected
    assert tb.errors == 0 and tb.overruns == 0


@cocotb.test()
async def test_rx_framing_error_glitch_and_overrun(dut) -> None:
    """A low stop bit is an error (byte dropped); a glitch is no byte; a full output overruns."""
    tb = TB(dut)
    await tb.reset()
    await tb.send_line(0x55, stop=0)
    await ClockCycles(dut.clk, DIVISOR)
    dut.rx.value = 1
    await ClockCycles(dut.clk, 2 * DIVISOR)
    assert tb.received == [] and tb.errors == 1
    # a glitch shorter than half a bit starts nothing
    dut.rx.value = 0
    await ClockCycles(dut.clk, max(1, DIVISOR // 2 - 2))
    dut.rx.value = 1
    await ClockCycles(dut.clk, 12 * DIVISOR)
    assert tb.received == [] and tb.errors == 1
    await tb.send_line(0xA7)
    await ClockCycles(dut.clk, DIVISOR)
    assert tb.received == [0xA7]
    # the consumer waits: the receiver and the FIFO hold FIFO + 1 bytes, the next is dropped
    tb.hold_ready = True
    held = list(range(0x11, 0x11 + FIFO + 1))
    for byte in [*held, 0xEE]:
        await tb.send_line(byte)
    await ClockCycles(dut.clk, DIVISOR)
    assert tb.overruns == 1 and tb.received == [0xA7]
    tb.hold_ready = False
    await ClockCycles(dut.clk, FIFO + 4)
    assert tb.received == [0xA7, *held]


@cocotb.test()
async def test_loopback(dut) -> None:
    """tx wired to rx: every byte comes back."""
    tb = TB(dut)
    await tb.reset()

    async def wire() -> None:
        while True:
            await RisingEdge(dut.clk)
            dut.rx.value = int(dut.tx.value)

    cocotb.start_soon(wire())
    data = bytes(random.Random(3).getrandbits(8) for _ in range(100))
    await tb.send_stream(data)
    await ClockCycles(dut.clk, 12 * DIVISOR)
    assert bytes(tb.received) == data
    assert tb.errors == 0 and tb.overruns == 0
