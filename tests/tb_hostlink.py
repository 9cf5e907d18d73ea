"""cocotb testbench of :class:`perturbo.hdl.hostlink.HostLink` (run by ``test_hostlink.py``).

The design is :class:`hostlink_top.HostLinkTop` (HostLink and a RAM bus target with
random wait states), configured from the JSON in ``HOSTLINK_CFG``. Every test sends
bytes with an idle-gap generator, takes the replies with a back-pressure generator, and
compares the reply bytes with :class:`perturbo.host.protocol.DeviceModel` byte for byte;
each test runs crossed with (no gaps, no back-pressure) and (gaps, back-pressure).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable

import cocotb
from cocotb.triggers import ClockCycles, RisingEdge
from hdl_tbutil import Bench, send_bytes
from hostlink_top import REG_ID, TargetModel, fuzz_cases

from perturbo.hdl.bus import Space
from perturbo.hdl.hostlink import WORD_ADDR_BITS
from perturbo.host.protocol import (
    SOF,
    DeviceModel,
    Frame,
    FrameDecoder,
    Op,
    Status,
    encode_request,
    id_payload,
    read_payload,
    write_payload,
)

CFG = json.loads(os.environ.get("HOSTLINK_CFG", "{}"))
DEPTH = CFG.get("depth", 1024)
MAX_WORDS = CFG.get("max_words", 64)
BYTE_TIMEOUT = CFG.get("byte_timeout", 1 << 20)
IDENT = CFG.get("ident", 0x12345678)
FUZZ = CFG.get("fuzz", 300)

WEIGHTS = Space.WEIGHTS << WORD_ADDR_BITS


def gaps(enabled: bool, seed: int) -> Callable[[], int]:
    """Idle cycles before the next byte: 0, or often 0 with occasional gaps (< byte_timeout)."""
    rng = random.Random(seed)
    longest = min(40, BYTE_TIMEOUT // 4)
    return (lambda: 0) if not enabled else (
        lambda: 0 if rng.random() < 0.7 else rng.randint(1, longest))


def backpressure(enabled: bool, seed: int) -> Callable[[], bool]:
    """Whether the host takes a reply byte this cycle."""
    rng = random.Random(seed)
    return (lambda: True) if not enabled else (lambda: rng.random() < 0.6)


class TB:
    """Clock, reset, rx driver, tx monitor and the reference model of the device."""

    def __init__(self, dut, *, idle: bool, bp: bool) -> None:
        self.dut = dut
        self.gap = gaps(idle, 1)
        self.take = backpressure(bp, 2)
        self.replies = bytearray()
        self.target = TargetModel(DEPTH)
        self.model = DeviceModel(self.target, max_words=MAX_WORDS, ident=IDENT)
        self.expected = bytearray()
        self.bench = Bench(dut)  # the clock, and every input driven

    async def reset(self) -> None:
        """Reset, then zero the RAM through the link (it keeps its contents across tests)."""
        await self.bench.reset()
        cocotb.start_soon(self._monitor())
        for start in range(0, DEPTH, MAX_WORDS):
            count = min(MAX_WORDS, DEPTH - start)
            zeros = write_payload(WEIGHTS | start, [0] * count)
            await self.send(encode_request(0, Op.WRITE, zeros))
        await self.settle()
        self.replies.clear()
        self.expected.clear()

    async def _monitor(self) -> None:
        dut = self.dut
        while True:
            dut.tx__ready.value = 1 if self.take() else 0
            await RisingEdge(dut.clk)
            if int(dut.tx__valid.value) and int(dut.tx__ready.value):
                self.replies.append(int(dut.tx__payload.value))

    async def send(self, data: bytes, *, model: bool = True) -> None:
        """Send ``data`` with idle gaps; the model predicts the replies unless ``model=False``."""
        if model:
            self.expected += self.model.feed(data)
        await send_bytes(self.dut, "rx", data, self.gap)

    async def settle(self, timeout: int = 200_000) -> None:
        """Wait until every predicted reply byte has arrived (and a little longer)."""
        for _ in range(timeout // 100):
            if len(self.replies) >= len(self.expected):
                break
            await ClockCycles(self.dut.clk, 100)
        await ClockCycles(self.dut.clk, 200)
        assert bytes(self.replies) == bytes(self.expected), self._first_difference()

    def _first_difference(self) -> str:
        got = FrameDecoder().feed(bytes(self.replies))
        want = FrameDecoder().feed(bytes(self.expected))
        for index, (a, b) in enumerate(zip(got, want, strict=False)):
            if a != b:
                return f"reply {index} differs: got {a}, expected {b}"
        return f"got {len(got)} replies, expected {len(want)}"

    def decoded(self) -> list[Frame]:
        events = FrameDecoder().feed(bytes(self.replies))
        assert all(isinstance(e, Frame) for e in events), events
        return events  # type: ignore[return-value]


def crossed(test: Callable) -> Callable:
    """Run ``test`` without and with idle gaps and back-pressure."""
    return cocotb.parametrize(idle_bp=[(False, False), (True, True)])(test)


@cocotb.test()
@crossed
async def test_every_opcode(dut, idle_bp: tuple[bool, bool]) -> None:
    """PING, WRITE and READ bursts (up to max_words, with framing bytes in the data)."""
    tb = TB(dut, idle=idle_bp[0], bp=idle_bp[1])
    await tb.reset()
    rng = random.Random(5)
    words = [0x7E7E7E7E, 0x7D7D7D7D, 0x0000007E, 0x7D000000] + [
        rng.getrandbits(32) for _ in range(MAX_WORDS - 4)]
    await tb.send(encode_request(1, Op.PING))
    await tb.send(encode_request(2, Op.WRITE, write_payload(WEIGHTS | 10, words)))
    await tb.send(encode_request(3, Op.READ, read_payload(WEIGHTS | 10, MAX_WORDS)))
    await tb.send(encode_request(4, Op.WRITE, write_payload(WEIGHTS | 3, [0xDEADBEEF])))
    await tb.send(encode_request(5, Op.READ, read_payload(WEIGHTS | 2, 3)))
    await tb.send(encode_request(6, Op.READ, read_payload(Space.REGS << WORD_ADDR_BITS, 1)))
    await tb.settle()
    replies = tb.decoded()
    assert [r.seq for r in replies] == [1, 2, 3, 4, 5, 6]
    assert all(r.status == Status.OK for r in replies)
    assert replies[0].payload == id_payload(MAX_WORDS, IDENT)
    assert replies[1].payload == MAX_WORDS.to_bytes(2, "little")
    assert replies[2].payload == b"".join(w.to_bytes(4, "little") for w in words)
    assert replies[4].payload == b"".join(w.to_bytes(4, "little") for w in [0, 0xDEADBEEF, 0])
    assert replies[5].payload == REG_ID.to_bytes(4, "little")


@cocotb.test()
@crossed
async def test_error_replies(dut, idle_bp: tuple[bool, bool]) -> None:
    """Each error gets its reply; the memory is untouched by every refused frame."""
    tb = TB(dut, idle=idle_bp[0], bp=idle_bp[1])
    await tb.reset()
    good = encode_request(9, Op.WRITE, write_payload(WEIGHTS | 7, [1, 2, 3]))
    corrupted = bytearray(good)
    corrupted[-5] ^= 0x01
    cases = [
        (bytes(corrupted), Status.BAD_CRC, 9),
        (encode_request(10, Op.READ, read_payload(WEIGHTS, 0)), Status.BAD_LEN, 10),
        (encode_request(11, Op.READ, read_payload(WEIGHTS, MAX_WORDS + 1)), Status.BAD_LEN, 11),
        (encode_request(12, Op.WRITE, write_payload(WEIGHTS, [1])[:-1]), Status.BAD_LEN, 12),
        (encode_request(13, Op.PING, b"x"), Status.BAD_LEN, 13),
        (encode_request(14, 0x42, b""), Status.BAD_OP, 14),
        (encode_request(15, Op.WRITE, write_payload(Space.GRADS << WORD_ADDR_BITS, [1])),
         Status.BUS_ERR, 15),
        (encode_request(16, Op.READ, read_payload(Space.OUTPUTS << WORD_ADDR_BITS, 2)),
         Status.BUS_TIMEOUT, 16),
        (good[:9], Status.TRUNCATED, 9),  # ended by the next frame's SOF
    ]
    for data, _, _ in cases:
        await tb.send(data)
    await tb.send(encode_request(17, Op.READ, read_payload(WEIGHTS | 7, 3)))
    await tb.settle()
    replies = tb.decoded()
    assert [(r.status, r.seq) for r in replies[:-1]] == [(s, q) for _, s, q in cases]
    assert replies[-1].status == Status.OK and replies[-1].payload == bytes(12)
    # a frame cut short and then silence: the inter-byte timeout drops it
    await tb.send(good[:12])
    tb.expected += tb.model.byte_timeout()
    await ClockCycles(dut.clk, BYTE_TIMEOUT + 50)
    await tb.send(encode_request(18, Op.PING))
    await tb.settle()
    replies = tb.decoded()
    assert (replies[-2].status, replies[-2].seq) == (Status.TRUNCATED, 9)
    assert (replies[-1].status, replies[-1].seq) == (Status.OK, 18)


@cocotb.test()
@crossed
async def test_garbage_and_resync(dut, idle_bp: tuple[bool, bool]) -> None:
    """Garbage between frames is ignored; SOF SOF is an empty frame; escapes decode."""
    tb = TB(dut, idle=idle_bp[0], bp=idle_bp[1])
    await tb.reset()
    await tb.send(b"\x00\xff\x7d\x12\x34")
    await tb.send(bytes([SOF, SOF]) + encode_request(1, Op.PING)[1:])
    await tb.send(b"hello" + encode_request(0x7E, Op.WRITE, write_payload(WEIGHTS | 0x7D, [0x7E])))
    await tb.send(encode_request(0x7D, Op.READ, read_payload(WEIGHTS | 0x7D, 1)))
    await tb.settle()
    replies = tb.decoded()
    assert [(r.seq, r.status) for r in replies] == [(1, Status.OK), (0x7E, Status.OK),
                                                    (0x7D, Status.OK)]
    assert replies[-1].payload == (0x7E).to_bytes(4, "little")


@cocotb.test()
@crossed
async def test_fuzz(dut, idle_bp: tuple[bool, bool]) -> None:
    """Random, corrupted, truncated and refused frames mixed with good ones, then a clean write."""
    tb = TB(dut, idle=idle_bp[0], bp=idle_bp[1])
    await tb.reset()
    rng = random.Random(100 + idle_bp[0])
    shadow = TargetModel(DEPTH)
    shadow_model = DeviceModel(shadow, max_words=MAX_WORDS, ident=IDENT)
    cases = fuzz_cases(rng, FUZZ, depth=DEPTH, max_words=MAX_WORDS)
    for case in cases:
        await tb.send(case.data)
        if case.good:  # only good frames may change the memory
            shadow_model.feed(case.data)
    await tb.send(encode_request(1, Op.PING))
    await tb.settle(timeout=2_000_000)
    assert (tb.target.mem == shadow.mem).all(), "a bad frame changed the memory"
    # the memory as the device sees it, then a normal write and read
    for start in range(0, DEPTH, MAX_WORDS):
        await tb.send(encode_request(2, Op.READ, read_payload(WEIGHTS | start, MAX_WORDS)))
    await tb.send(encode_request(3, Op.WRITE, write_payload(WEIGHTS | 5, [0x600D])))
    await tb.send(encode_request(4, Op.READ, read_payload(WEIGHTS | 5, 1)))
    await tb.settle(timeout=2_000_000)
    assert tb.decoded()[-1].payload == (0x600D).to_bytes(4, "little")
