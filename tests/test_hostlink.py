"""HostLink: the protocol model on its own, and the cocotb testbench on Verilator.

The cocotb tests (``tb_hostlink.py``) drive :class:`hostlink_top.HostLinkTop` byte by
byte and compare every reply byte with :class:`perturbo.host.protocol.DeviceModel`. The
10,000-frame fuzz runs through the Verilator co-simulation instead (``test_cosim.py``).
"""

from __future__ import annotations

import gc
import json
import random
from pathlib import Path

import pytest
from cocotb_build import SIMULATORS, run_cocotb
from hostlink_top import HostLinkTop, TargetModel, fuzz_cases

from perturbo.hdl.hostlink import CRC, CRC_INIT, CRC_POLY, HostLink
from perturbo.host.protocol import (
    DecodeError,
    DeviceModel,
    Frame,
    FrameDecoder,
    Op,
    Status,
    crc16,
    encode_reply,
    encode_request,
    id_payload,
    read_payload,
    write_payload,
)

COCOTB_CFG = {"depth": 256, "max_words": 16, "byte_timeout": 300, "bus_timeout": 64,
              "ident": 0x12345678, "fuzz": 1000}


def test_crc16_check_value() -> None:
    """The host's CRC (binascii) is the bitwise CRC of the gateware's constants, and what
    the gateware's CRC unit (amaranth.lib.crc) computes."""
    assert crc16(b"123456789") == 0x29B1 == CRC.compute(b"123456789")  # CRC-16/CCITT-FALSE

    def bitwise(data: bytes) -> int:
        crc = CRC_INIT
        for byte in data:
            crc ^= byte << 8
            for _ in range(8):
                crc = ((crc << 1) ^ CRC_POLY if crc & 0x8000 else crc << 1) & 0xFFFF
        return crc

    data = bytes(random.Random(5).randrange(256) for _ in range(300))
    assert all(crc16(data[:n]) == bitwise(data[:n]) == CRC.compute(data[:n]) for n in range(0, 300, 7))


def test_frame_examples_in_docs() -> None:
    """The hex examples in docs/protocol.md are what the encoder produces."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()
    weights = 1 << 24
    examples = [
        encode_request(0x01, Op.PING),
        encode_reply(0x01, Op.PING, Status.OK, id_payload(256, 0x12345678)),
        encode_request(0x02, Op.WRITE, write_payload(weights | 0x10, [0x11223344, 0x7E])),
        encode_reply(0x02, Op.WRITE, Status.OK, (2).to_bytes(2, "little")),
        encode_request(0x03, Op.READ, read_payload(weights | 0x10, 2)),
        encode_reply(0x03, Op.READ, Status.OK, bytes.fromhex("443322117e000000")),
        encode_reply(0x04, Op.WRITE, Status.BAD_CRC),
        encode_reply(0x05, Op.WRITE, Status.BUS_ERR, (3).to_bytes(2, "little")),
        encode_reply(0x06, Op.READ, Status.TRUNCATED),
    ]
    for frame in examples:
        assert frame.hex(" ") in doc, frame.hex(" ")


def test_decoder_round_trip_and_errors() -> None:
    rng = random.Random(0)

    def payload() -> bytes:
        size = rng.randint(0, 50)
        return bytes(rng.choice([0x7E, 0x7D, rng.getrandbits(8)]) for _ in range(size))

    frames = [(rng.getrandbits(8), rng.getrandbits(8), rng.choice(list(Status)), payload())
              for _ in range(200)]
    stream = b"".join(encode_reply(*f) for f in frames)
    decoder = FrameDecoder()
    events = []
    for i in range(0, len(stream), 7):  # in pieces
        events += decoder.feed(stream[i:i + 7])
    assert [(e.seq, e.op, e.status, e.payload) for e in events] == frames
    bad = bytearray(encode_reply(1, 2, 0, b"abc"))
    bad[-1] ^= 1
    assert FrameDecoder().feed(bytes(bad)) == [DecodeError("crc", 1)]
    assert FrameDecoder().feed(encode_reply(3, 2, 0, b"abc")[:5] + encode_reply(4, 2, 0))[0] == (
        DecodeError("truncated", 3))


def test_model_refuses_bad_frames() -> None:
    """Bad frames never change the model's memory; good ones do (the fuzz oracle itself)."""
    rng = random.Random(1)
    target, shadow = TargetModel(256), TargetModel(256)
    model = DeviceModel(target, max_words=16)
    shadow_model = DeviceModel(shadow, max_words=16)
    replies = 0
    for case in fuzz_cases(rng, 3000, depth=256, max_words=16):
        out = model.feed(case.data)
        replies += sum(isinstance(e, Frame) for e in FrameDecoder().feed(out))
        if case.good:
            shadow_model.feed(case.data)
    assert (target.mem == shadow.mem).all()
    assert target.mem.any() and replies > 2500


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_parameters_are_checked() -> None:
    with pytest.raises(ValueError, match="at most 16383"):
        HostLink(max_words=20000)
    with pytest.raises(TypeError, match="positive integer"):
        HostLink(byte_timeout=0)
    with pytest.raises(ValueError, match="ident"):
        HostLink(ident=-1)
    with pytest.raises(TypeError, match="registered_read"):
        HostLink(registered_read=1)  # type: ignore[arg-type]
    gc.collect()  # the half-built components warn now, inside this test's warning filter


@pytest.mark.parametrize("registered_read", [True, False], ids=["registered-read", "direct-read"])
@pytest.mark.parametrize("comb_ack", [False, True], ids=["one-cycle-ack", "same-cycle-ack"])
def test_amaranth_sim_fuzz(comb_ack: bool, registered_read: bool) -> None:
    """A second simulator and two more bus timings: Amaranth's simulator, fuzz against the model.

    The target answers every request one cycle after ``stb`` (no wait states), or in the
    same cycle (combinational ``ack``); bytes come with gaps and leave with back-pressure.
    The frame buffer's read registered (the ECP5 boards) and not (the iCEBreaker).
    """
    from amaranth.sim import Simulator

    depth, max_words = 64, 8
    top = HostLinkTop(depth=depth, max_words=max_words, byte_timeout=200, bus_timeout=20,
                      wait_states=False, comb_ack=comb_ack, registered_read=registered_read)
    model = DeviceModel(TargetModel(depth), max_words=max_words, ident=0x12345678)
    rng = random.Random(3 + comb_ack)
    cases = fuzz_cases(rng, 150, depth=depth, max_words=max_words)
    data = b"".join(c.data for c in cases) + encode_request(1, Op.PING)
    expected = model.feed(data)
    got = bytearray()

    async def send(ctx) -> None:
        for byte in data:
            ctx.set(top.rx.valid, 1)
            ctx.set(top.rx.payload, byte)
            await ctx.tick().until(top.rx.ready)
            ctx.set(top.rx.valid, 0)
            if rng.random() < 0.2:
                await ctx.tick().repeat(rng.randint(1, 5))
        for _ in range(20_000):
            if len(got) >= len(expected):
                break
            await ctx.tick()

    async def take(ctx) -> None:
        while True:
            ctx.set(top.tx.ready, rng.random() < 0.7)
            await ctx.tick()

    async def monitor(ctx) -> None:
        async for _clk, _rst, valid, ready, payload in ctx.tick().sample(
                top.tx.valid, top.tx.ready, top.tx.payload):
            if valid and ready:
                got.append(payload)

    sim = Simulator(top)
    sim.add_clock(1e-6)
    sim.add_testbench(send)
    sim.add_testbench(take, background=True)
    sim.add_process(monitor)
    sim.run()
    assert bytes(got) == expected


@pytest.mark.parametrize("registered_read", [True, False], ids=["registered-read", "direct-read"])
@pytest.mark.parametrize("sim", SIMULATORS)
def test_hostlink_cocotb(sim: str, registered_read: bool) -> None:
    """The cocotb testbench, the frame buffer's read registered (the ECP5s) and direct (the
    iCEBreaker), on both simulators."""
    # Icarus runs about 25x slower: 250 fuzz frames there (75 s -> about 25 s), 1000 on Verilator
    cfg = {**COCOTB_CFG, "fuzz": COCOTB_CFG["fuzz"] if sim == "verilator" else 250}
    top = HostLinkTop(depth=cfg["depth"], max_words=cfg["max_words"],
                      byte_timeout=cfg["byte_timeout"], bus_timeout=cfg["bus_timeout"],
                      ident=cfg["ident"], registered_read=registered_read)
    run_cocotb(top, "hostlink_top", "tb_hostlink", extra_env={"HOSTLINK_CFG": json.dumps(cfg)},
               simulator=sim)
