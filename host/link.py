"""Host driver of the host link: the same code talks to a board and to the co-simulation.

:class:`Link` opens a pyserial transport from a URL (``serial.serial_for_url``)::

    Link("socket://127.0.0.1:5555")   # the Verilator co-simulation (sim/cosim.py)
    Link("/dev/ttyUSB0", baudrate=115200)  # a board's UART

and speaks the framed protocol of ``docs/protocol.md`` over it: frames are built and
checked here with the same CRC as the gateware, a missing or corrupt reply is retried,
and what cannot be fixed by retrying raises :class:`LinkError` naming the cause.

Retrying is safe because every request is idempotent: a WRITE stores the same words at
the same addresses again, and a READ has no side effects on the bus targets that
perturbo builds (registers with read side effects must not be read through a retried
READ).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

import numpy as np

from perturbo.backend import BackendFailure
from perturbo.hdl.bus import WORD_ADDR_BITS

from .protocol import (
    ID_LEN,
    MAGIC,
    DecodeError,
    Frame,
    FrameDecoder,
    Op,
    Status,
    encode_request,
    read_payload,
)

__all__ = ["DeviceInfo", "Link", "LinkError", "LinkStats", "Transport", "bus_address"]

#: Statuses that mean "the request did not arrive intact": retried.
RETRYABLE = frozenset({Status.BAD_CRC, Status.TRUNCATED})


class Transport(Protocol):
    """What :class:`Link` needs of a transport (a ``serial.Serial`` has it all)."""

    timeout: float | None

    def write(self, data: bytes, /) -> int | None: ...

    def read(self, size: int = 1, /) -> bytes: ...

    def close(self) -> None: ...


class LinkError(BackendFailure):
    """A request failed for good.

    Attributes
    ----------
    op : Op or None
        The request's opcode.
    status : Status or None
        The device's status code, when the device answered with an error.
    attempts : int
        How many times the request was sent.
    completed : int or None
        For BUS_ERR and BUS_TIMEOUT: the words done before the bus failed.
    """

    def __init__(self, message: str, *, op: Op | None = None, status: Status | None = None,
                 attempts: int = 0, completed: int | None = None) -> None:
        super().__init__(message)
        self.op = op
        self.status = status
        self.attempts = attempts
        self.completed = completed


@dataclass(frozen=True)
class DeviceInfo:
    """The PING reply.

    Attributes
    ----------
    version : int
        Protocol version.
    max_words : int
        Largest burst per frame.
    ident : int
        The 32-bit value the design was built with.
    """

    version: int
    max_words: int
    ident: int


@dataclass
class LinkStats:
    """Counters of a :class:`Link`.

    Attributes
    ----------
    requests : int
        Requests completed.
    retries : int
        Extra attempts (timeouts, corrupt replies, BAD_CRC/TRUNCATED from the device).
    stale : int
        Replies ignored because their sequence number was not the one awaited.
    sent, received : int
        Bytes written to and read from the transport: on a UART, what the line carries
        (10 bit times each at 8N1).
    """

    requests: int = 0
    retries: int = 0
    stale: int = 0
    sent: int = 0
    received: int = 0


def bus_address(space: int, word: int) -> int:
    """The 32-bit bus address of ``word`` in address ``space``."""
    if not 0 <= int(space) < 256:
        raise ValueError(f"address space must be 0..255, not {space!r}")
    if not 0 <= int(word) < (1 << WORD_ADDR_BITS):
        raise ValueError(f"word address must be 0..{(1 << WORD_ADDR_BITS) - 1}, not {word!r}")
    return (int(space) << WORD_ADDR_BITS) | int(word)


def _op_name(op: int) -> str:
    try:
        return Op(op).name
    except ValueError:
        return f"opcode 0x{op:02x}"


def _as_words(words: Iterable[int] | np.ndarray) -> np.ndarray:
    """``words`` as uint32, refusing values that do not fit (negatives are two's complement)."""
    array = np.asarray(words)
    if array.ndim != 1:
        array = array.reshape(-1)
    if array.size == 0:
        return array.astype(np.uint32)
    if array.dtype.kind not in "iub":
        raise TypeError(f"words must be integers, not {array.dtype}")
    if array.dtype.kind == "i" or array.dtype == object:
        low, high = int(array.min()), int(array.max())
        if low < -(1 << 31) or high >= (1 << 32):
            raise ValueError(f"words must fit in 32 bits; got values from {low} to {high}")
        return (array.astype(np.int64) & 0xFFFFFFFF).astype(np.uint32)
    if int(array.max()) >= (1 << 32):
        raise ValueError(f"words must fit in 32 bits; got {int(array.max())}")
    return array.astype(np.uint32)


class Link:
    """Host side of the framed host-link protocol.

    Parameters
    ----------
    transport : str or Transport
        A pyserial URL (``"socket://127.0.0.1:PORT"``, ``"/dev/ttyUSB0"``), or an open
        object with ``read``/``write``/``close`` and a ``timeout`` attribute.
    baudrate : int
        Serial speed (ignored by sockets); also sizes the reply timeouts.
    timeout : float
        Seconds to wait for a reply, on top of the time its bytes take at ``baudrate``.
    retries : int
        Extra attempts of a request whose reply is missing or corrupt.

    Examples
    --------
    >>> with Link(sim.url) as link:                                  # doctest: +SKIP
    ...     link.write_words(Space.WEIGHTS, 0, np.arange(100))
    ...     link.read_words(Space.WEIGHTS, 0, 100)
    """

    def __init__(self, transport: str | Transport, *, baudrate: int = 115200,
                 timeout: float = 1.0, retries: int = 3) -> None:
        if retries < 0:
            raise ValueError(f"retries must be a non-negative integer, not {retries!r}")
        if isinstance(transport, str):
            import serial

            # socket:// opens the connection here; the harness accepts one host
            try:
                self._port: Any = serial.serial_for_url(transport, baudrate=baudrate,
                                                        timeout=timeout)
            except (serial.SerialException, ValueError) as error:
                raise LinkError(f"cannot open {transport!r}: {error}") from error
            self.url: str | None = transport
        else:
            self._port = transport
            self.url = None
        self.baudrate = baudrate
        self.timeout = timeout
        self.retries = retries
        self.stats = LinkStats()
        self._decoder = FrameDecoder(reply=True)
        self._pending: list[Frame | DecodeError] = []
        self._seq = 0
        self._info: DeviceInfo | None = None

    # ---- plumbing ---------------------------------------------------------------------

    def close(self) -> None:
        """Close the transport (the co-simulation then exits)."""
        self._port.close()

    def __enter__(self) -> Link:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def transport(self) -> Transport:
        """The open transport (for tests and diagnostics)."""
        return self._port

    def send_raw(self, data: bytes) -> None:
        """Write ``data`` to the transport as it is (for tests and diagnostics)."""
        self._port.write(data)
        self.stats.sent += len(data)

    def receive(self, timeout: float, *, count: int | None = None) -> list[Frame | DecodeError]:
        """Decoded replies (and decoding errors) that arrive within ``timeout`` seconds.

        Returns as soon as ``count`` of them have arrived, if ``count`` is given.
        """
        deadline = time.monotonic() + timeout
        events: list[Frame | DecodeError] = []
        while count is None or len(events) < count:
            events += self._poll(deadline)
            if time.monotonic() >= deadline:
                break
        return events

    def _poll(self, deadline: float) -> list[Frame | DecodeError]:
        """Read what the decoder needs (at most until ``deadline``); returns the new events."""
        if self._pending:
            events, self._pending = self._pending, []
            return events
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return []
        if self._port.timeout is None or abs(self._port.timeout - remaining) > 0.05:
            self._port.timeout = remaining  # reconfigures a serial port: not on every read
        # never ask for more than the current frame still needs: read() returns at once
        try:
            data = self._port.read(self._decoder.need())
        except OSError as error:  # serial.SerialException is an OSError too
            raise self._broken("read from", error) from error
        self.stats.received += len(data)
        return self._decoder.feed(data) if data else []

    def _broken(self, what: str, error: OSError) -> LinkError:
        where = repr(self.url) if self.url is not None else "the transport"
        return LinkError(f"cannot {what} {where}: the link is broken ({error})")

    def _reply_time(self, nbytes: int) -> float:
        return self.timeout + 2.0 * nbytes * 10 / self.baudrate

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFF
        return self._seq

    # ---- requests ---------------------------------------------------------------------

    def transact(self, op: Op, payload: bytes = b"", *, reply_len: int = 0) -> bytes:
        """Send one request, retrying as needed; returns the OK reply's payload.

        Parameters
        ----------
        op : Op
            The opcode.
        payload : bytes
            The request payload.
        reply_len : int
            Expected reply payload length (for the timeout).

        Raises
        ------
        LinkError
            The device refused the request (BAD_LEN, BAD_OP, BUS_ERR, BUS_TIMEOUT, or an
            unknown status), or no intact reply came after ``retries`` extra attempts.
        """
        attempts = 0
        reasons: list[str] = []
        while attempts <= self.retries:
            attempts += 1
            if attempts > 1:
                self.stats.retries += 1
            seq = self._next_seq()
            frame = encode_request(seq, op, payload)
            try:
                self._port.write(frame)
            except OSError as error:
                raise self._broken("write to", error) from error
            self.stats.sent += len(frame)
            deadline = time.monotonic() + self._reply_time(len(frame) + reply_len + 8)
            reason = self._await(seq, op, deadline, attempts)
            if isinstance(reason, bytes):
                self.stats.requests += 1
                return reason
            reasons.append(reason)
        raise LinkError(f"{_op_name(op)} failed after {attempts} attempts: "
                        + "; ".join(reasons), op=op, attempts=attempts)

    def _await(self, seq: int, op: Op, deadline: float, attempts: int) -> bytes | str:
        """The reply payload, or why this attempt failed (raises for a refused request)."""
        while True:
            events = self._poll(deadline)
            for index, event in enumerate(events):
                if isinstance(event, DecodeError):
                    self._pending = events[index + 1:]
                    return f"corrupt reply ({event.reason})"
                if event.seq != seq:
                    self.stats.stale += 1
                    continue
                if event.status in RETRYABLE:  # our frame arrived damaged (maybe its op too)
                    self._pending = events[index + 1:]
                    return f"device reported {Status(event.status).name}"
                if event.op != op:
                    self.stats.stale += 1
                    continue
                self._pending = events[index + 1:]
                status = event.status
                if status == Status.OK:
                    return event.payload
                self._raise_refused(op, status, event.payload, attempts)
            if time.monotonic() >= deadline:
                return f"no reply within {self._reply_time(0):.2g} s"

    @staticmethod
    def _raise_refused(op: Op, status: Status | int | None, payload: bytes,
                       attempts: int) -> None:
        try:
            code: Status | None = Status(status)
            name = code.name
        except (ValueError, TypeError):
            code, name = None, f"unknown status {status!r}"
        completed = int.from_bytes(payload[:2], "little") if len(payload) >= 2 else None
        detail = {
            Status.BAD_LEN: "the length does not fit the opcode or exceeds the burst size",
            Status.BAD_OP: "the device does not know this opcode",
            Status.BUS_ERR: f"the bus target refused word {completed} of the burst",
            Status.BUS_TIMEOUT: f"the bus target did not answer word {completed} of the burst",
        }.get(code, "")
        raise LinkError(f"{_op_name(op)} refused by the device: {name}" + (f" ({detail})" if detail
                                                                       else ""),
                        op=op, status=code, attempts=attempts, completed=completed)

    def ping(self) -> DeviceInfo:
        """Check the link and learn the burst size.

        Raises
        ------
        LinkError
            No device answers, or what answers does not speak this protocol.
        """
        payload = self.transact(Op.PING, reply_len=ID_LEN)
        if len(payload) != ID_LEN or payload[:4] != MAGIC:
            raise LinkError(f"PING answered {payload!r}, not a perturbo host link", op=Op.PING)
        self._info = DeviceInfo(payload[4], int.from_bytes(payload[5:7], "little"),
                                int.from_bytes(payload[7:11], "little"))
        return self._info

    @property
    def max_words(self) -> int:
        """Largest burst the device takes (asks it once)."""
        if self._info is None:
            self.ping()
        assert self._info is not None
        return self._info.max_words

    def _check_range(self, space: int, addr: int, n: int) -> None:
        bus_address(space, addr)
        if n < 0 or addr + n > (1 << WORD_ADDR_BITS):
            raise ValueError(f"{n} words from word {addr} run past the end of space {space}")

    def read_words(self, space: int, addr: int, n: int, *,
                   dtype: np.dtype | type = np.uint32) -> np.ndarray:
        """Read ``n`` words from word ``addr`` of ``space`` (in bursts of ``max_words``).

        Parameters
        ----------
        space : int
            Address space (:class:`perturbo.hdl.bus.Space`).
        addr : int
            First word address.
        n : int
            Number of words.
        dtype : numpy dtype
            ``np.uint32`` (default) or ``np.int32`` to read two's complement values.

        Returns
        -------
        numpy.ndarray
            ``n`` words.
        """
        dtype = np.dtype(dtype)
        if dtype not in (np.dtype(np.uint32), np.dtype(np.int32)):
            raise TypeError(f"dtype must be uint32 or int32, not {dtype}")
        self._check_range(space, addr, n)
        out = np.empty(n, dtype="<u4")
        done = 0
        while done < n:
            count = min(self.max_words, n - done)
            payload = self.transact(Op.READ, read_payload(bus_address(space, addr + done), count),
                                    reply_len=4 * count)
            if len(payload) != 4 * count:
                raise LinkError(f"READ returned {len(payload)} bytes for {count} words",
                                op=Op.READ)
            out[done:done + count] = np.frombuffer(payload, dtype="<u4")
            done += count
        return out.astype(np.uint32).view(dtype)

    def write_words(self, space: int, addr: int, words: Iterable[int] | np.ndarray) -> None:
        """Write ``words`` from word ``addr`` of ``space`` (in bursts of ``max_words``).

        ``words`` may be any integer sequence or array; signed values are stored as
        two's complement, and every value must fit in 32 bits.
        """
        data = _as_words(words)
        self._check_range(space, addr, data.size)
        done = 0
        while done < data.size:
            count = min(self.max_words, data.size - done)
            chunk = data[done:done + count]
            payload = self.transact(Op.WRITE, bus_address(space, addr + done).to_bytes(
                4, "little") + chunk.astype("<u4").tobytes())
            if int.from_bytes(payload[:2], "little") != count:
                raise LinkError(f"WRITE acknowledged {payload!r} for {count} words", op=Op.WRITE)
            done += count

    def read_word(self, space: int, addr: int) -> int:
        """One word."""
        return int(self.read_words(space, addr, 1)[0])

    def write_word(self, space: int, addr: int, value: int) -> None:
        """One word."""
        self.write_words(space, addr, [value])
