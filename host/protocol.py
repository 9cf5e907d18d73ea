"""The host link protocol in Python: CRC, framing, an incremental decoder, a device model.

The wire constants come from the gateware (:mod:`perturbo.hdl.hostlink`) so the two
sides cannot drift apart; ``docs/protocol.md`` is the specification.
:class:`DeviceModel` is a reference model of :class:`perturbo.hdl.hostlink.HostLink`:
given the same bytes it produces the same reply bytes, which is how the tests check the
gateware byte for byte.
"""

from __future__ import annotations

import binascii
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum

from perturbo.hdl.hostlink import (
    CRC_INIT,
    ESC,
    ESC_XOR,
    ID_LEN,
    MAGIC,
    MAX_WORDS_LIMIT,
    REPLY_HEADER_LEN,
    REQUEST_HEADER_LEN,
    SOF,
    VERSION,
    Op,
    Status,
    id_payload,
)

__all__ = [
    "ESC",
    "ID_LEN",
    "MAGIC",
    "SOF",
    "VERSION",
    "BusResult",
    "DecodeError",
    "DeviceModel",
    "Frame",
    "FrameDecoder",
    "Unstuffer",
    "Op",
    "Status",
    "crc16",
    "encode_reply",
    "encode_request",
    "id_payload",
    "read_payload",
    "stuff",
    "write_payload",
]


def crc16(data: bytes | bytearray | memoryview, crc: int = CRC_INIT) -> int:
    """CRC-16/CCITT-FALSE of ``data`` (``crc16(b"123456789") == 0x29B1``).

    ``binascii.crc_hqx`` is this CRC (polynomial 0x1021, no reflection, no final XOR)
    from a given start, in C; the gateware's :data:`CRC_POLY` and :data:`CRC_INIT` are
    the same constants, checked by ``tests/test_hostlink.py``.

    Parameters
    ----------
    data : bytes-like
        The bytes.
    crc : int
        Starting value, for computing a CRC in pieces.
    """
    return binascii.crc_hqx(data, crc)


def stuff(body: bytes) -> bytes:
    """``SOF`` followed by ``body`` with every ``SOF``/``ESC`` byte escaped."""
    out = bytearray([SOF])
    for byte in body:
        if byte in (SOF, ESC):
            out += bytes([ESC, byte ^ ESC_XOR])
        else:
            out.append(byte)
    return bytes(out)


def _with_crc(body: bytes) -> bytes:
    return body + crc16(body).to_bytes(2, "big")


def encode_request(seq: int, op: int, payload: bytes = b"") -> bytes:
    """A request frame as sent on the wire (stuffed, with SOF and CRC)."""
    if len(payload) > 0xFFFF:
        raise ValueError(f"a payload holds at most 65535 bytes, not {len(payload)}")
    header = bytes([seq & 0xFF, op & 0xFF]) + len(payload).to_bytes(2, "little")
    return stuff(_with_crc(header + payload))


def encode_reply(seq: int, op: int, status: int, payload: bytes = b"") -> bytes:
    """A reply frame as the device sends it (stuffed, with SOF and CRC)."""
    header = bytes([seq & 0xFF, op & 0xFF, status & 0xFF]) + len(payload).to_bytes(2, "little")
    return stuff(_with_crc(header + payload))


def read_payload(addr: int, count: int) -> bytes:
    """Payload of a READ: the 32-bit bus address and the word count."""
    return addr.to_bytes(4, "little") + count.to_bytes(2, "little")


def write_payload(addr: int, words: Iterable[int]) -> bytes:
    """Payload of a WRITE: the 32-bit bus address and the words, little-endian."""
    return addr.to_bytes(4, "little") + b"".join(w.to_bytes(4, "little") for w in words)


@dataclass(frozen=True)
class Frame:
    """A decoded frame whose CRC checked.

    Attributes
    ----------
    seq, op : int
        Sequence number and opcode.
    status : Status or int or None
        Reply status (``None`` for a request).
    payload : bytes
        The payload.
    """

    seq: int
    op: int
    status: Status | int | None
    payload: bytes


@dataclass(frozen=True)
class DecodeError:
    """A frame that did not decode: ``reason`` is ``"crc"`` or ``"truncated"``."""

    reason: str
    seq: int | None = None


class Unstuffer:
    """Undoes the byte stuffing, one wire byte at a time (shared by the host's decoder and
    the reference model of the device, so that both read the wire the same way)."""

    #: :meth:`push`'s answer to a ``SOF``: a frame starts.
    START = -1

    def __init__(self) -> None:
        self.escaped = False

    def push(self, byte: int) -> int | None:
        """:data:`START` for a ``SOF``, ``None`` for an ``ESC`` (the next byte is escaped),
        otherwise the unstuffed data byte."""
        if byte == SOF:
            self.escaped = False
            return self.START
        if byte == ESC:
            self.escaped = True
            return None
        if self.escaped:
            self.escaped = False
            return byte ^ ESC_XOR
        return byte


class FrameDecoder:
    """Incremental decoder of a stuffed byte stream into frames.

    Parameters
    ----------
    reply : bool
        Decode replies (header with STATUS) rather than requests.
    """

    def __init__(self, *, reply: bool = True) -> None:
        self._header_len = REPLY_HEADER_LEN if reply else REQUEST_HEADER_LEN
        self._reply = reply
        self._body: bytearray | None = None  # None: hunting for SOF
        self._unstuff = Unstuffer()
        self._total: int | None = None

    def reset(self) -> None:
        """Forget any partial frame and hunt for the next SOF."""
        self._body = None
        self._unstuff.escaped = False
        self._total = None

    def need(self) -> int:
        """A lower bound on the wire bytes still needed to finish the current frame (>= 1)."""
        if self._body is None:
            return 1 + self._header_len + 2
        if self._total is None:
            return self._header_len + 2 - len(self._body)
        return max(1, self._total - len(self._body))

    def feed(self, data: bytes | bytearray) -> list[Frame | DecodeError]:
        """Decode ``data``; returns the frames (and decoding errors) it completed."""
        events: list[Frame | DecodeError] = []
        for wire_byte in data:
            byte = self._unstuff.push(wire_byte)
            if byte == Unstuffer.START:
                if self._body:  # a SOF inside a frame: it was truncated
                    events.append(DecodeError("truncated", self._body[0]))
                self._body = bytearray()
                self._total = None
                continue
            body = self._body
            if body is None or byte is None:
                continue
            body.append(byte)
            if self._total is None and len(body) == self._header_len:
                length = int.from_bytes(body[-2:], "little")
                self._total = self._header_len + length + 2
            if self._total is not None and len(body) == self._total:
                events.append(self._finish(bytes(body)))
                self.reset()
        return events

    def _finish(self, body: bytes) -> Frame | DecodeError:
        if crc16(body) != 0:
            return DecodeError("crc", body[0])
        payload = body[self._header_len:-2]
        if self._reply:
            try:
                status: Status | int | None = Status(body[2])
            except ValueError:
                status = body[2]
        else:
            status = None
        return Frame(body[0], body[1], status, payload)


class BusResult(Enum):
    """How a bus target answered one request."""

    ACK = "ack"
    ERR = "err"
    TIMEOUT = "timeout"


#: A bus target model: ``bus(we, addr, wdata) -> (result, rdata)``.
BusModel = Callable[[bool, int, int], tuple[BusResult, int]]


class DeviceModel:
    """Reference model of :class:`~perturbo.hdl.hostlink.HostLink` and its bus target.

    Feed it the bytes the host sends; it returns the bytes HostLink replies with,
    applying the frames to ``bus``. It follows the gateware state for state, except
    that time does not exist: call :meth:`byte_timeout` where the gateware's
    inter-byte timeout would have expired.

    Parameters
    ----------
    bus : callable
        ``bus(we, addr, wdata) -> (BusResult, rdata)``, one call per bus request.
    max_words : int
        The HostLink's ``max_words``.
    ident : int
        The HostLink's ``ident``.
    """

    _HUNT, _SEQ, _OP, _LEN0, _LEN1, _PAYLOAD, _CRC0, _CRC1 = range(8)

    def __init__(self, bus: BusModel, *, max_words: int = 256, ident: int = 0) -> None:
        if not 1 <= max_words <= MAX_WORDS_LIMIT:
            raise ValueError(f"max_words must be 1..{MAX_WORDS_LIMIT}, not {max_words!r}")
        self.bus = bus
        self.max_words = max_words
        self.ident = ident
        self._state = self._HUNT
        self._unstuff = Unstuffer()
        self._start()

    def _start(self) -> None:
        self._seq = 0
        self._op = 0
        self._length = 0
        self._payload = bytearray()
        self._crc = CRC_INIT

    def byte_timeout(self) -> bytes:
        """The inter-byte timeout expired: drop a partial frame (its reply is returned)."""
        self._unstuff.escaped = False
        if self._state == self._HUNT:
            return b""
        if self._state == self._SEQ:
            self._state = self._HUNT
            return b""
        self._state = self._HUNT
        return encode_reply(self._seq, self._op, Status.TRUNCATED)

    def feed(self, data: bytes | bytearray) -> bytes:
        """Process ``data``; returns the reply bytes it causes."""
        out = bytearray()
        for wire_byte in data:
            byte = self._unstuff.push(wire_byte)
            if byte == Unstuffer.START:
                if self._state not in (self._HUNT, self._SEQ):
                    out += encode_reply(self._seq, self._op, Status.TRUNCATED)
                self._state = self._SEQ
                self._start()
                continue
            if byte is None or self._state == self._HUNT:
                continue
            self._crc = crc16(bytes([byte]), self._crc)
            state = self._state
            if state == self._SEQ:
                self._seq = byte
                self._state = self._OP
            elif state == self._OP:
                self._op = byte
                self._state = self._LEN0
            elif state == self._LEN0:
                self._length = byte
                self._state = self._LEN1
            elif state == self._LEN1:
                self._length |= byte << 8
                self._state = self._PAYLOAD if self._length else self._CRC0
            elif state == self._PAYLOAD:
                self._payload.append(byte)
                if len(self._payload) == self._length:
                    self._state = self._CRC0
            elif state == self._CRC0:
                self._state = self._CRC1
            else:
                self._state = self._HUNT
                out += self._execute()
        return bytes(out)

    def _execute(self) -> bytes:
        seq, op, length, payload = self._seq, self._op, self._length, bytes(self._payload)

        def reply(status: Status, body: bytes = b"") -> bytes:
            return encode_reply(seq, op, status, body)

        if self._crc != 0:
            return reply(Status.BAD_CRC)
        if op == Op.PING:
            if length != 0:
                return reply(Status.BAD_LEN)
            return reply(Status.OK, id_payload(self.max_words, self.ident))
        if op == Op.READ:
            count = int.from_bytes(payload[4:6], "little") if length == 6 else 0
            if length != 6 or not 1 <= count <= self.max_words:
                return reply(Status.BAD_LEN)
            words = []
        elif op == Op.WRITE:
            if length < 8 or length % 4 or length > 4 + 4 * self.max_words:
                return reply(Status.BAD_LEN)
            count = (length - 4) // 4
            words = [int.from_bytes(payload[4 + 4 * i:8 + 4 * i], "little") for i in range(count)]
        else:
            return reply(Status.BAD_OP)
        addr = int.from_bytes(payload[0:4], "little")
        write = op == Op.WRITE
        data = bytearray()
        for i in range(count):
            bus_addr = (addr & 0xFF000000) | ((addr + i) & 0xFFFFFF)
            result, rdata = self.bus(write, bus_addr, words[i] if write else 0)
            if result is not BusResult.ACK:
                status = Status.BUS_ERR if result is BusResult.ERR else Status.BUS_TIMEOUT
                return reply(status, i.to_bytes(2, "little"))
            data += (rdata & 0xFFFFFFFF).to_bytes(4, "little")
        if write:
            return reply(Status.OK, count.to_bytes(2, "little"))
        return reply(Status.OK, bytes(data))
