"""A HostLink test top with a memory-backed bus target, and a Python model of that target.

Shared by the cocotb testbench (``test_hostlink.py`` / ``tb_hostlink.py``) and the
Verilator co-simulation tests (``test_cosim.py``). The target answers:

- ``Space.WEIGHTS``: a RAM of ``depth`` words; addresses past the end get ``err``;
- ``Space.REGS`` word 0: a read-only ID register (:data:`REG_ID`); writes get ``err``;
- ``Space.OUTPUTS``: never answers (exercises the bus timeout);
- anything else: ``err``.

With ``wait_states`` it adds 0..3 pseudo-random wait cycles before each ``ack``; with
``comb_ack`` it answers in the same cycle instead.
"""

from __future__ import annotations

import random
from typing import NamedTuple

import numpy as np
from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In

from perturbo.hdl.bus import BusSignature, Space
from perturbo.hdl.hostlink import WORD_ADDR_BITS, LinkedTarget
from perturbo.host.protocol import (
    SOF,
    BusResult,
    Frame,
    FrameDecoder,
    Op,
    encode_request,
    read_payload,
    write_payload,
)

REG_ID = 0xC0FFEE42


class MemTarget(wiring.Component):
    """The bus target described in the module docstring.

    Parameters
    ----------
    depth : int
        Words of RAM in ``Space.WEIGHTS``.
    wait_states : bool
        Add 0..3 pseudo-random wait cycles before each ``ack``.
    comb_ack : bool
        Answer in the cycle ``stb`` rises (combinational ``ack``, asynchronous RAM read).
    """

    def __init__(self, depth: int = 1024, *, wait_states: bool = True,
                 comb_ack: bool = False) -> None:
        self.depth = depth
        self.wait_states = wait_states
        self.comb_ack = comb_ack
        super().__init__({"bus": In(BusSignature)})

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.ram = ram = Memory(shape=32, depth=self.depth, init=[])
        rd = ram.read_port(domain="comb" if self.comb_ack else "sync")
        wr = ram.write_port()
        bus = self.bus
        space = bus.addr[WORD_ADDR_BITS:]
        word = bus.addr[:WORD_ADDR_BITS]
        is_ram = (space == Space.WEIGHTS) & (word < self.depth)
        is_id = (space == Space.REGS) & (word == 0)

        ack = Signal()
        if self.comb_ack:
            m.d.comb += ack.eq(bus.stb & (space != Space.OUTPUTS))
        wait = Signal(2)
        lfsr = Signal(16, init=0xACE1)
        m.d.sync += lfsr.eq((lfsr << 1) | (lfsr[15] ^ lfsr[13] ^ lfsr[12] ^ lfsr[10]))
        m.d.comb += rd.addr.eq(word)
        if not self.comb_ack:
            with m.If(bus.stb & ~ack & (space != Space.OUTPUTS)):
                with m.If(wait == 0):
                    m.d.sync += ack.eq(1)
                    if self.wait_states:
                        m.d.sync += wait.eq(lfsr[0:2])
                with m.Else():
                    m.d.sync += wait.eq(wait - 1)
            with m.Else():
                m.d.sync += ack.eq(0)

        m.d.comb += [
            bus.ack.eq(ack),
            bus.err.eq(ack & ~is_ram & ~(is_id & ~bus.we)),
            bus.rdata.eq(0),
        ]
        with m.If(is_ram):
            m.d.comb += bus.rdata.eq(rd.data)
        with m.Elif(is_id):
            m.d.comb += bus.rdata.eq(REG_ID)
        m.d.comb += [
            wr.addr.eq(word),
            wr.data.eq(bus.wdata),
            wr.en.eq(ack & bus.we & is_ram),
        ]
        return m


class HostLinkTop(LinkedTarget):
    """HostLink and a :class:`MemTarget`: host byte streams in and out, nothing else.

    Members
    -------
    rx : ``In(stream.Signature(8))``
    tx : ``Out(stream.Signature(8))``
    """

    def __init__(self, *, depth: int = 1024, max_words: int = 64, byte_timeout: int = 1 << 20,
                 bus_timeout: int = 64, ident: int = 0x12345678, wait_states: bool = True,
                 comb_ack: bool = False, registered_read: bool = True) -> None:
        super().__init__(MemTarget(depth, wait_states=wait_states, comb_ack=comb_ack),
                         max_words=max_words, byte_timeout=byte_timeout,
                         bus_timeout=bus_timeout, ident=ident, registered_read=registered_read)


class TargetModel:
    """Python model of :class:`MemTarget` for :class:`perturbo.host.protocol.DeviceModel`.

    Parameters
    ----------
    depth : int
        Words of RAM.
    """

    def __init__(self, depth: int = 1024) -> None:
        self.mem = np.zeros(depth, dtype=np.uint32)

    def __call__(self, we: bool, addr: int, wdata: int) -> tuple[BusResult, int]:
        space, word = addr >> WORD_ADDR_BITS, addr & ((1 << WORD_ADDR_BITS) - 1)
        if space == Space.OUTPUTS:
            return BusResult.TIMEOUT, 0
        if space == Space.WEIGHTS and word < len(self.mem):
            if we:
                self.mem[word] = wdata
            return BusResult.ACK, int(self.mem[word])
        if space == Space.REGS and word == 0 and not we:
            return BusResult.ACK, REG_ID
        return BusResult.ERR, 0


def _random_words(rng: random.Random, n: int) -> list[int]:
    # bias towards the framing bytes so that stuffing is exercised
    special = (0x7E7E7E7E, 0x7D7D7D7D, 0x7E7D207E, 0xFFFFFFFF, 0)
    return [rng.choice(special) if rng.random() < 0.2 else rng.getrandbits(32) for _ in range(n)]


def _is_bad(frame: bytes) -> bool:
    """No request in ``frame`` decodes with a good CRC (so the device must not apply it)."""
    return not any(isinstance(e, Frame) for e in FrameDecoder(reply=False).feed(frame))


class FuzzCase(NamedTuple):
    """One fuzz case: the bytes to send and whether they are a good frame the device applies."""

    kind: str
    data: bytes
    good: bool


def fuzz_cases(rng: random.Random, count: int, *, depth: int, max_words: int,
               seq0: int = 0) -> list[FuzzCase]:
    """``count`` fuzz cases against a :class:`HostLinkTop` of ``depth`` words.

    About one case in ten is a good frame (PING, or a READ or WRITE of the RAM); the
    rest are frames with a good CRC that the device must refuse (bad length, unknown
    opcode, bus error, bus timeout), WRITEs with corrupted bytes, truncated WRITEs and
    random bytes. Corrupted cases are checked to hold no frame with a good CRC, so a
    device that applies any of them is wrong.
    """
    weights = Space.WEIGHTS << WORD_ADDR_BITS
    cases: list[FuzzCase] = []
    seq = seq0
    while len(cases) < count:
        seq = (seq + 1) & 0xFF
        kind = rng.choices(
            ["good", "refused", "corrupt", "truncated", "random"], [10, 15, 35, 20, 20])[0]
        n = rng.randint(1, max_words)
        base = weights | rng.randrange(depth - n + 1)
        write = encode_request(seq, Op.WRITE, write_payload(base, _random_words(rng, n)))
        if kind == "good":
            choice = rng.random()
            if choice < 0.1:
                data = encode_request(seq, Op.PING)
            elif choice < 0.4:
                data = encode_request(seq, Op.READ, read_payload(base, n))
            else:
                data = write
            cases.append(FuzzCase(kind, data, True))
        elif kind == "refused":
            variant = rng.randrange(10)
            if variant == 0:
                payload, op = b"\x00" * rng.randint(1, 8), Op.PING
            elif variant == 1:
                payload, op = read_payload(base, rng.choice([0, max_words + 1, 0xFFFF])), Op.READ
            elif variant == 2:
                payload, op = read_payload(base, 1) + bytes(rng.randint(1, 3)), Op.READ
            elif variant == 3:
                payload, op = write_payload(base, [1] * n)[:-rng.randint(1, 3)], Op.WRITE
            elif variant == 4:
                payload, op = write_payload(base, [1] * (max_words + 1)), Op.WRITE
            elif variant == 5:
                payload, op = base.to_bytes(4, "little"), Op.WRITE
            elif variant == 6:
                payload = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 12)))
                op = rng.choice([0x00, 0x04, 0x7E, 0x7D, 0xFF])
            elif variant == 7:  # past the end of the RAM: the first words land, then err
                payload, op = write_payload(weights | (depth - 1), [5] * 2), Op.WRITE
            elif variant == 8:
                space = rng.choice([Space.GRADS, Space.MOMENTUM, Space.REGS])
                payload, op = write_payload(space << WORD_ADDR_BITS, [1]), Op.WRITE
            else:
                payload, op = write_payload(Space.OUTPUTS << WORD_ADDR_BITS, [1]), Op.WRITE
            # variant 7 writes one word before the error: a good frame, applied in part
            cases.append(FuzzCase(kind, encode_request(seq, op, payload), variant == 7))
        elif kind == "corrupt":
            data = bytearray(write)
            for _ in range(rng.randint(1, 3)):
                action = rng.random()
                pos = rng.randrange(1, len(data))
                if action < 0.7:
                    data[pos] ^= rng.randrange(1, 256)
                elif action < 0.85:
                    del data[pos]
                else:
                    data.insert(pos, rng.getrandbits(8))
            if _is_bad(bytes(data)):
                cases.append(FuzzCase(kind, bytes(data), False))
        elif kind == "truncated":
            cases.append(FuzzCase(kind, write[:rng.randrange(1, len(write))], False))
        else:
            data = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 40)))
            if rng.random() < 0.5:
                data = bytes([SOF]) + data
            if _is_bad(data):
                cases.append(FuzzCase(kind, data, False))
    return cases
