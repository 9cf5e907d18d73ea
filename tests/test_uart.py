"""UART PHY: divisor arithmetic, and the cocotb testbench on Verilator at fast divisors."""

from __future__ import annotations

import gc

import pytest
from cocotb_build import SIMULATORS, run_cocotb

from perturbo.hdl.uart import UART, uart_divisor


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_divisor() -> None:
    assert uart_divisor(12_000_000, 115_200) == 104
    assert uart_divisor(48_000_000, 3_000_000) == 16
    with pytest.raises(ValueError, match="too slow"):
        uart_divisor(1_000_000, 500_000)
    with pytest.raises(ValueError, match="off by"):
        uart_divisor(1_000_000, 180_000)  # divisor 5.56 rounds to 6: 7.4 % off
    with pytest.raises(TypeError, match="at least 4"):
        UART(divisor=3)
    gc.collect()  # the half-built components warn now, inside this test's warning filter


@pytest.mark.parametrize("sim", SIMULATORS)
@pytest.mark.parametrize(("divisor", "fifo"), [(5, 0), (8, 4)])
def test_uart_cocotb(divisor: int, fifo: int, sim: str) -> None:
    run_cocotb(UART(divisor=divisor, rx_fifo_depth=fifo), "uart_top", "tb_uart",
               extra_env={"UART_DIVISOR": str(divisor), "UART_FIFO": str(fifo)}, simulator=sim)


def test_hostlink_over_uart() -> None:
    """LinkedTarget with a UART: frames bit-banged in, replies decoded from the line.

    Runs in Amaranth's simulator at 4 cycles per bit; each reply must match the model.
    """
    from amaranth.sim import Simulator
    from hostlink_top import MemTarget, TargetModel

    from perturbo.hdl.hostlink import LinkedTarget
    from perturbo.host.protocol import (
        DeviceModel,
        Op,
        encode_request,
        read_payload,
        write_payload,
    )

    divisor = 4
    top = LinkedTarget(MemTarget(64), uart=UART(divisor=divisor), max_words=8, ident=7)
    model = DeviceModel(TargetModel(64), max_words=8, ident=7)
    weights = 1 << 24
    requests = [
        encode_request(1, Op.PING),
        encode_request(2, Op.WRITE, write_payload(weights | 3, [0x7E7D0102, 0xCAFEF00D])),
        encode_request(3, Op.READ, read_payload(weights | 2, 4)),
    ]
    received = bytearray()

    async def host(ctx) -> None:
        ctx.set(top.rx, 1)
        await ctx.tick().repeat(20)
        for request in requests:
            expected = len(received) + len(model.feed(request))
            for byte in request:
                for bit in [0, *((byte >> i) & 1 for i in range(8)), 1]:
                    ctx.set(top.rx, bit)
                    await ctx.tick().repeat(divisor)
            for _ in range(20_000):
                if len(received) >= expected:
                    break
                await ctx.tick()

    async def line(ctx) -> None:  # decode the tx line
        while True:
            await ctx.tick()
            if ctx.get(top.tx):
                continue
            await ctx.tick().repeat(divisor // 2)
            byte = 0
            for i in range(8):
                await ctx.tick().repeat(divisor)
                byte |= ctx.get(top.tx) << i
            await ctx.tick().repeat(divisor)
            received.append(byte)

    sim = Simulator(top)
    sim.add_clock(1e-6)
    sim.add_testbench(host)
    sim.add_testbench(line, background=True)
    sim.run()
    check = DeviceModel(TargetModel(64), max_words=8, ident=7)
    assert bytes(received) == b"".join(check.feed(r) for r in requests)
