"""The host link: a framed, checksummed command protocol from a byte stream to the bus.

:class:`HostLink` takes request frames from a byte stream (a UART on a board, a TCP
socket in the Verilator co-simulation), checks them, applies them to the accelerator's
memory-mapped bus (:mod:`perturbo.hdl.bus`) and answers every frame with a reply
frame. ``docs/protocol.md`` is the specification; this module holds the gateware and
the wire constants that the host side (:mod:`perturbo.host.protocol`) imports.

Wire format, both directions (after the start byte every byte is *stuffed*: ``SOF``
and ``ESC`` inside a frame are sent as ``ESC, byte ^ 0x20``, so a ``SOF`` on the wire
always starts a frame)::

    request:  SOF | SEQ | OP | LEN_LO LEN_HI | PAYLOAD (LEN bytes) | CRC_HI CRC_LO
    reply:    SOF | SEQ | OP | STATUS | LEN_LO LEN_HI | PAYLOAD (LEN bytes) | CRC_HI CRC_LO

The CRC is CRC-16/CCITT-FALSE (polynomial 0x1021, initial value 0xFFFF, no reflection,
no final XOR) over the unstuffed bytes from ``SEQ`` to the end of the payload, sent most
significant byte first.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import Cat, Module, Mux, Signal, Value
from amaranth.lib import crc, enum, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .bus import WORD_ADDR_BITS, BusSignature
from .memories import no_read_collision

__all__ = [
    "CRC",
    "CRC_INIT",
    "CRC_POLY",
    "ESC",
    "ESC_XOR",
    "ID_LEN",
    "MAGIC",
    "MAX_WORDS_LIMIT",
    "REPLY_HEADER_LEN",
    "REQUEST_HEADER_LEN",
    "SOF",
    "VERSION",
    "WORD_ADDR_BITS",
    "HostLink",
    "LinkedTarget",
    "Op",
    "Status",
    "id_payload",
]

#: Start of frame; never appears inside a frame (it is stuffed).
SOF = 0x7E
#: Escape: the next byte is XORed with :data:`ESC_XOR`.
ESC = 0x7D
#: What an escaped byte is XORed with.
ESC_XOR = 0x20
#: The frame check: CRC-16/CCITT-FALSE over bytes (``amaranth.lib.crc``'s catalogue entry;
#: its ``Processor`` is the gateware's CRC unit, and the host's ``binascii.crc_hqx`` from
#: :data:`CRC_INIT` computes the same values).
CRC = crc.catalog.CRC16_CCITT_FALSE(data_width=8)
#: Its generator polynomial.
CRC_POLY = CRC.algorithm.polynomial
#: Its initial value.
CRC_INIT = CRC.algorithm.initial_crc
#: First four bytes of the PING reply.
MAGIC = b"PTRB"
#: Protocol version, the fifth byte of the PING reply.
VERSION = 1
#: Length of the PING reply payload: magic, version, max_words (2 bytes), ident (4 bytes).
ID_LEN = 11
#: Request header after SOF: SEQ, OP, LEN_LO, LEN_HI.
REQUEST_HEADER_LEN = 4
#: Reply header after SOF: SEQ, OP, STATUS, LEN_LO, LEN_HI.
REPLY_HEADER_LEN = 5
#: Largest burst: a READ reply of ``4 * max_words`` bytes must fit the 16-bit length.
MAX_WORDS_LIMIT = 16383


def id_payload(max_words: int, ident: int) -> bytes:
    """Payload of a PING reply: magic, version, ``max_words`` and ``ident``, little-endian."""
    return MAGIC + bytes([VERSION]) + max_words.to_bytes(2, "little") + ident.to_bytes(4, "little")


class Op(enum.IntEnum, shape=8):
    """Request opcodes."""

    #: Empty payload; the reply carries magic, version, burst size and ident.
    PING = 0x01
    #: Payload ``ADDR`` (4 bytes) ``COUNT`` (2 bytes); the reply carries ``COUNT`` words.
    READ = 0x02
    #: Payload ``ADDR`` (4 bytes) then the words; the reply carries the count written.
    WRITE = 0x03


class Status(enum.IntEnum, shape=8):
    """Reply status codes."""

    OK = 0x00
    #: The frame's CRC did not check; nothing was applied.
    BAD_CRC = 0x01
    #: The length does not fit the opcode, or the burst exceeds ``max_words``.
    BAD_LEN = 0x02
    #: Unknown opcode.
    BAD_OP = 0x03
    #: The bus target refused a request (``err``); the payload counts the words done.
    BUS_ERR = 0x04
    #: The bus target did not answer in time; the payload counts the words done.
    BUS_TIMEOUT = 0x05
    #: The frame stopped early (a new SOF, or the inter-byte timeout); nothing applied.
    TRUNCATED = 0x06


def _positive_int(name: str, value: object, limit: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise TypeError(f"{name} must be a positive integer, not {value!r}")
    if limit is not None and value > limit:
        raise ValueError(f"{name} must be at most {limit}, not {value!r}")
    return value


#: What a reply's payload is (``_LinkState.rkind``): none, the PING ident, buffered READ
#: data, or the count of words done.
_KIND_NONE, _KIND_ID, _KIND_DATA, _KIND_COUNT = 0, 1, 2, 3


@dataclass(frozen=True)
class _LinkState:
    """What :class:`HostLink`'s states and datapaths share (see ``HostLink._link_state``).

    The frame buffer's ports and its read data registered (``rdata``, word ``idx`` when
    ``rdata_ok``); the unstuffer's input (``receiving``: a state takes bytes) and outputs
    (``take``: a received byte is taken, ``is_sof``, ``dval`` and ``data``: an unstuffed
    data byte, ``esc``); the frame registers
    (``seq`` .. ``idx_next``) and the moves of ``idx`` the states ask for (``idx_zeroes``,
    ``idx_steps``: :meth:`idx_to_zero`, :meth:`idx_to_next`); the bus engine's ``advance``,
    ``bwe``, the bus's read data as it takes it (``bus_rdata``) and the timers' inputs and
    outputs; the reply's ``status``, ``rkind``, ``hpos``
    and ``crc_lo``; the CRC unit and its inputs; the logical reply byte stream ``g_*`` that
    the stuffer consumes.
    """

    wr: object
    rd: object
    receiving: Signal
    rdata: Signal
    rdata_ok: Signal
    bus_rdata: Value  #: the bus's read data as the bus state takes it
    take: Signal
    is_sof: Signal
    dval: Signal
    data: Signal
    esc: Signal
    seq: Signal
    op: Signal
    length: Signal
    addr: Signal
    count: Signal
    wshift: Signal
    hdr: Signal
    wpos: Signal
    left: Signal
    idx: Signal
    idx_next: Signal
    idx_zeroes: Signal
    idx_steps: Signal
    advance: Signal
    in_frame: Signal
    in_bus: Signal
    timer_done: Signal
    restart: Signal
    btimer_done: Signal
    bwe: Signal
    status: Signal
    rkind: Signal
    hpos: Signal
    crc_lo: Signal
    crc_unit: object
    crc_in: Signal
    crc_start: Signal
    crc_update: Signal
    g_valid: Signal
    g_byte: Signal
    g_raw: Signal
    g_take: Signal

    def idx_to_zero(self, m: Module) -> None:
        """``idx`` back to word 0 next cycle (and ``idx_next`` to 1); wins over
        :meth:`idx_to_next` in the same cycle."""
        m.d.comb += self.idx_zeroes.eq(1)

    def idx_to_next(self, m: Module) -> None:
        """``idx`` on to the next word next cycle (and ``idx_next`` past it)."""
        m.d.comb += self.idx_steps.eq(1)


class HostLink(wiring.Component):
    """Framed command protocol from a byte stream to a bus initiator.

    Receives request frames on ``rx``, buffers the payload of each frame in a
    ``max_words``-word memory while it checks the CRC, and only then applies the frame
    to ``bus`` (one bus request per word, addresses incrementing within the space).
    Every frame gets exactly one reply on ``tx`` (``docs/protocol.md``): the data, or an
    explicit error. A ``SOF`` byte always starts a new frame, so the parser
    resynchronises at once after garbage or a truncated frame; a frame that stalls for
    ``byte_timeout`` cycles is dropped with a ``TRUNCATED`` reply.

    With ``registered_read`` each byte from ``rx`` waits in a register before the receive
    states see it.  While a frame is being applied or answered ``rx`` is not ready (one
    byte may wait in that register); a receiver that cannot wait needs a FIFO in front
    (:class:`~perturbo.hdl.uart.UART` has one).

    Parameters
    ----------
    max_words : int
        Largest burst in words (buffer depth), 1..16383.
    byte_timeout : int
        Cycles without a byte inside a frame before the frame is dropped.
    bus_timeout : int
        Cycles to wait for ``ack`` before giving up on a bus request.
    ident : int
        32-bit value returned by PING (for instance a hash of the configuration).
    registered_read : bool
        Register the frame buffer's read data, each received byte and the bus's answer
        (``True``, the default): the block RAM's output then starts no path into the bus
        target or the stuffer, at two cycles of wait per word, the receiver's byte none
        through the unstuffer and the receive states into the buffer, and the target's
        answer none into the buffer or the reply, at a cycle more per bus word.  ``False``
        uses all three directly, in fewer iCE40 logic cells (about 50 fewer before the
        answer's 35 registers), for builds whose clock other paths set (the iCE40's, by the hash:
        :attr:`perturbo.boards.top.Board.link_registered_read`).  The replies are the same
        either way; only their timing differs.

    Members
    -------
    rx : ``In(stream.Signature(8))``
        Bytes from the host.
    tx : ``Out(stream.Signature(8))``
        Bytes to the host.
    bus : ``Out(BusSignature)``
        Bus initiator.
    """

    def __init__(self, *, max_words: int = 256, byte_timeout: int = 1 << 20,
                 bus_timeout: int = 4096, ident: int = 0, registered_read: bool = True) -> None:
        self.max_words = _positive_int("max_words", max_words, MAX_WORDS_LIMIT)
        self.byte_timeout = _positive_int("byte_timeout", byte_timeout)
        self.bus_timeout = _positive_int("bus_timeout", bus_timeout)
        if not isinstance(ident, int) or not 0 <= ident < (1 << 32):
            raise ValueError(f"ident must be an integer in 0..2**32-1, not {ident!r}")
        self.ident = ident
        if not isinstance(registered_read, bool):
            raise TypeError(f"registered_read must be a bool, not {registered_read!r}")
        self.registered_read = registered_read
        super().__init__({
            "rx": In(stream.Signature(8)),
            "tx": Out(stream.Signature(8)),
            "bus": Out(BusSignature),
        })

    def id_payload(self) -> bytes:
        """The PING reply payload this instance sends."""
        return id_payload(self.max_words, self.ident)

    def elaborate(self, platform) -> Module:
        """The frame buffer, the byte unstuffer, the link's state machine (receive, check and
        execute, bus, reply) and the byte stuffer, built in that order."""
        m = Module()
        max_words = self.max_words

        m.submodules.buffer = buffer = Memory(shape=32, depth=max_words, init=[])
        wr = buffer.write_port()
        rd = buffer.read_port()  # synchronous, not transparent: data one cycle after addr

        no_read_collision(m, buffer, "link_buffer", platform, wr, [rd])
        s = self._link_state(m, wr, rd)
        self._read_register(m, s)
        length_ok = self._length_verdict(m, s)
        with m.FSM(name="link"):
            self._receive_states(m, s)
            self._exec_state(m, s, length_ok)
            self._bus_state(m, s)
            self._reply_states(m, s)
        self._datapaths(m, s)
        self._transmit(m, s)
        return m

    def _link_state(self, m: Module, wr: object, rd: object) -> _LinkState:
        """The unstuffer and the registers, timers, CRC unit and reply byte stream that the
        states share (receiving, executing and replying happen one at a time)."""
        # ---- receive: the byte registered as it arrives, then unstuffing ------------------
        # (from the receiver's byte through the unstuffer and the receive states into the
        # frame buffer's write was six logic levels: an ECP5 8-lane build's slowest path)
        receiving = Signal()  # a receive state takes a byte this cycle if there is one
        held = Signal(name="rx_held")  # a byte waits in the register
        byte = Signal(8, name="rx_byte")
        take = Signal()  # the held byte is taken this cycle
        is_sof = Signal(name="rx_is_sof")
        is_esc = Signal(name="rx_is_esc")
        dval = Signal()  # an unstuffed data byte is available
        data = Signal(8)
        esc = Signal()  # the previous byte was ESC
        if self.registered_read:
            m.d.comb += [self.rx.ready.eq(~held | receiving), take.eq(held & receiving)]
            with m.If(self.rx.valid & self.rx.ready):
                m.d.sync += [held.eq(1), byte.eq(self.rx.payload), is_sof.eq(self.rx.payload == SOF),
                             is_esc.eq(self.rx.payload == ESC)]
            with m.Elif(take):
                m.d.sync += held.eq(0)
        else:  # the byte as it arrives (the iCE40's logic cells are dear, its hash sets the clock)
            m.d.comb += [self.rx.ready.eq(receiving), take.eq(self.rx.valid & receiving),
                         byte.eq(self.rx.payload), is_sof.eq(byte == SOF), is_esc.eq(byte == ESC)]
        m.d.comb += [
            data.eq(Mux(esc, byte ^ ESC_XOR, byte)),
            dval.eq(take & ~is_sof & ~is_esc),
        ]
        with m.If(take):
            m.d.sync += esc.eq(is_esc)

        # ---- state shared by receiving, executing and replying (one at a time) ------------
        seq = Signal(8)
        op = Signal(8)
        length = Signal(16)
        addr = Signal(32)
        count = Signal(16)  # READ: words asked for; replies: the word count sent back
        wshift = Signal(24)  # the three previous payload bytes of the current word
        hdr = Signal(range(7))  # payload bytes seen, saturating at 6 (address and count)
        wpos = Signal(2)  # byte within a word
        left = Signal(16)  # bytes (receive, reply) or words (bus) still to go
        idx = Signal(range(self.max_words + 1))  # word index: buffered, on the bus, or sent
        # idx + 1 from a register kept beside idx (every write of idx writes it too: _LinkState's
        # moves), so that no carry chain sits between idx and the buffer's read address
        # (the 16- and 32-lane builds' slowest path, 17 to 23 logic steps)
        idx_next = Signal.like(idx, init=1)
        # the states name idx's moves (_LinkState's idx_to_*), and _datapaths makes them, so
        # that idx's next value is known in one place: _read_register decides from it whether
        # rdata will hold word idx
        idx_zeroes, idx_steps = Signal(), Signal()
        advance = Signal()  # idx moves on next cycle: read the next buffer word now
        # inter-byte and bus timers count while their state waits and restart otherwise
        in_frame = Signal()  # in a receive state after the SOF
        in_bus = Signal()
        timer_done = self._timer(m, "timer", self.byte_timeout, in_frame & ~take)
        restart = Signal()  # a SOF aborted the last frame: the next one has started
        btimer_done = self._timer(m, "btimer", self.bus_timeout, in_bus & ~self.bus.ack)
        bwe = Signal()
        status = Signal(8)
        rkind = Signal(2)  # reply payload: one of the _KIND_* constants
        hpos = Signal(range(6))  # reply header byte; 0 is the SOF
        crc_lo = Signal()  # sending the low CRC byte

        # one CRC unit: over received bytes while receiving, over sent bytes while replying;
        # a restart wins over an update in the same cycle
        m.submodules.crc = crc_unit = CRC.create()
        crc_in = Signal(8)
        crc_start = Signal()
        crc_update = Signal()
        m.d.comb += [crc_unit.data.eq(crc_in), crc_unit.start.eq(crc_start),
                     crc_unit.valid.eq(crc_update & ~crc_start)]

        # the logical reply byte stream and the stuffer that consumes it
        g_valid = Signal()
        g_byte = Signal(8)
        g_raw = Signal()  # send unstuffed (the SOF)
        g_take = Signal()
        return _LinkState(
            wr=wr, rd=rd, receiving=receiving, rdata=Signal(32, name="rdata"), rdata_ok=Signal(name="rdata_ok", init=1),
            bus_rdata=Signal(32, name="bus_rdata") if self.registered_read else self.bus.rdata,
            take=take, is_sof=is_sof, dval=dval, data=data, esc=esc,
            seq=seq, op=op, length=length, addr=addr, count=count, wshift=wshift, hdr=hdr,
            wpos=wpos, left=left, idx=idx, idx_next=idx_next, idx_zeroes=idx_zeroes, idx_steps=idx_steps,
            advance=advance,
            in_frame=in_frame, in_bus=in_bus, timer_done=timer_done, restart=restart,
            btimer_done=btimer_done, bwe=bwe, status=status, rkind=rkind, hpos=hpos,
            crc_lo=crc_lo, crc_unit=crc_unit, crc_in=crc_in, crc_start=crc_start,
            crc_update=crc_update, g_valid=g_valid, g_byte=g_byte, g_raw=g_raw, g_take=g_take,
        )

    @staticmethod
    def _timer(m: Module, name: str, limit: int, counting: Value) -> Signal:
        """A counter of the cycles ``counting`` has held (0 otherwise), and its verdict
        ``count == limit`` as a register: set when the count about to be stored is ``limit``.
        The comparison ahead of the state machine, through its next state into ``left``, was
        the 32-lane ECP5 build's slowest path; the verdict is the same, in the same cycle."""
        count = Signal(range(limit + 1), name=name)
        done = Signal(name=f"{name}_done")
        m.d.sync += [count.eq(Mux(counting, count + 1, 0)), done.eq(counting & (count == limit - 1))]
        return done

    # ---- actions shared by several states ------------------------------------------------

    def _start_frame(self, m: Module, s: _LinkState) -> None:
        """A SOF arrived: clear the header and restart the CRC."""
        m.d.sync += [s.seq.eq(0), s.op.eq(0), s.length.eq(0), s.esc.eq(0)]
        m.d.comb += s.crc_start.eq(1)

    def _reply(self, m: Module, s: _LinkState, code: int, kind: int = _KIND_NONE,
               nbytes: Value | int = 0) -> None:
        """Answer with ``nbytes`` of payload (``left`` doubles as the LEN field)."""
        m.d.sync += [
            s.status.eq(code), s.rkind.eq(kind), s.left.eq(nbytes),
            s.hpos.eq(0), s.wpos.eq(0), s.crc_lo.eq(0),
        ]
        s.idx_to_zero(m)
        m.d.comb += s.crc_start.eq(1)
        m.next = "REPLY_HDR"

    def _abort(self, m: Module, s: _LinkState, restarted: bool) -> None:
        """Drop the frame being received (``restarted``: by a SOF, which starts the next)."""
        m.d.sync += [s.restart.eq(restarted), s.esc.eq(0)]
        self._reply(m, s, Status.TRUNCATED)

    def _finish(self, m: Module, s: _LinkState) -> None:
        """The reply is out: receive the frame whose SOF aborted the last one, or hunt."""
        with m.If(s.restart):
            self._start_frame(m, s)
            m.d.sync += s.restart.eq(0)
            m.next = "SEQ"
        with m.Else():
            m.next = "HUNT"

    # ---- the states ----------------------------------------------------------------------

    def _receive_states(self, m: Module, s: _LinkState) -> None:
        """HUNT for a SOF, then one state per request field; a SOF inside a frame or the
        inter-byte timeout drops the frame with a TRUNCATED reply (before SEQ: silently)."""
        with m.State("HUNT"):
            m.d.comb += s.receiving.eq(1)
            with m.If(s.take & s.is_sof):
                self._start_frame(m, s)
                m.next = "SEQ"

        for name in ["SEQ", "OP", "LEN0", "LEN1", "PAYLOAD", "CRC0", "CRC1"]:
            with m.State(name):
                m.d.comb += [s.receiving.eq(1), s.crc_in.eq(s.data), s.in_frame.eq(1)]
                with m.If(s.take & s.is_sof):
                    if name == "SEQ":
                        self._start_frame(m, s)  # SOF SOF: an empty frame, ignored
                    else:
                        self._abort(m, s, restarted=True)
                with m.Elif(s.timer_done):
                    if name == "SEQ":
                        m.d.sync += s.esc.eq(0)
                        m.next = "HUNT"
                    else:
                        self._abort(m, s, restarted=False)
                with m.Elif(s.dval):
                    m.d.comb += s.crc_update.eq(1)
                    self._receive(m, name, s)

    def _length_verdict(self, m: Module, s: _LinkState) -> Signal:
        """Whether the frame's LEN suits its opcode (and a READ's count its burst), for EXEC.

        Registered every cycle: EXEC comes after CRC0 and CRC1, so the opcode, the length and
        the count it tests have stood for two bytes at least, and the verdict is the same as
        the comparisons made in EXEC; those comparisons, ahead of the CRC unit's restart for
        the reply, were an ECP5 build's slowest path at 100 MHz.
        """
        max_words, op, length, count = self.max_words, s.op, s.length, s.count
        ok = Signal(name="length_ok")
        m.d.sync += ok.eq(Mux(op == Op.PING, length == 0, Mux(
            op == Op.READ, (length == 6) & (count != 0) & (count <= max_words),
            (length >= 8) & (length[0:2] == 0) & (length <= 4 + 4 * max_words))))
        return ok

    def _exec_state(self, m: Module, s: _LinkState, length_ok: Signal) -> None:
        """EXEC: check the CRC, the opcode and the length (:meth:`_length_verdict`); answer
        PING and errors at once, start the bus engine for READ and WRITE."""
        op = s.op
        with m.State("EXEC"):
            # idx is 0 here (CRC1 reset it), so rd.data holds the first word of a WRITE
            with m.If(~s.crc_unit.match_detected):  # data then its CRC leave the residue 0
                self._reply(m, s, Status.BAD_CRC)
            with m.Elif((op != Op.PING) & (op != Op.READ) & (op != Op.WRITE)):
                self._reply(m, s, Status.BAD_OP)
            with m.Elif(~length_ok):
                self._reply(m, s, Status.BAD_LEN)
            with m.Elif(op == Op.PING):
                self._reply(m, s, Status.OK, _KIND_ID, ID_LEN)
            with m.Elif(op == Op.READ):
                m.d.sync += [s.left.eq(s.count), s.bwe.eq(0)]
                m.next = "BUS"
            with m.Else():  # WRITE; left holds the words the payload filled the buffer with
                m.d.sync += s.bwe.eq(1)
                m.next = "BUS"

    def _bus_state(self, m: Module, s: _LinkState) -> None:
        """BUS: one request per word (READ data into the buffer); an error or the bus
        timeout stops the burst and the reply counts the words done."""
        bus, idx, idx_next, left = self.bus, s.idx, s.idx_next, s.left
        answered, refused, timed_out = bus.stb & bus.ack, bus.err, s.btimer_done
        if self.registered_read:
            # the link acts on the bus's answer a cycle after it, from registers (the
            # target's answer through the burst's moves into the buffer's address and write
            # enable, and through the reply's status into the CRC, were slowest paths of the
            # ECP5 builds); the request waits that cycle, and a timeout is taken a cycle late
            # too, unless an answer came in its cycle (the order the states had)
            answered, refused, timed_out = (Signal(name="bus_answered"), Signal(name="bus_refused"),
                                            Signal(name="bus_timed_out"))
            m.d.sync += [answered.eq(bus.stb & bus.ack), refused.eq(bus.err),
                         timed_out.eq(s.btimer_done & ~(bus.stb & bus.ack)), s.bus_rdata.eq(bus.rdata)]
        with m.State("BUS"):
            # a WRITE's word goes out once the registered read holds it; the bus timer
            # counts only while a request is out
            stb = ~s.bwe | s.rdata_ok
            if self.registered_read:
                stb = stb & ~answered & ~timed_out
            m.d.comb += [bus.stb.eq(stb), s.advance.eq(answered), s.in_bus.eq(stb)]
            with m.If(answered):
                with m.If(refused):
                    m.d.sync += s.count.eq(idx)
                    self._reply(m, s, Status.BUS_ERR, _KIND_COUNT, 2)
                with m.Else():
                    with m.If(~s.bwe):
                        m.d.comb += s.wr.en.eq(1)
                    m.d.sync += left.eq(left - 1)
                    s.idx_to_next(m)
                    with m.If(left == 1):
                        m.d.sync += s.count.eq(idx_next)
                        with m.If(s.bwe):
                            self._reply(m, s, Status.OK, _KIND_COUNT, 2)
                        with m.Else():
                            self._reply(m, s, Status.OK, _KIND_DATA, idx_next << 2)
            with m.Elif(timed_out):
                m.d.sync += s.count.eq(idx)
                self._reply(m, s, Status.BUS_TIMEOUT, _KIND_COUNT, 2)

    def _reply_states(self, m: Module, s: _LinkState) -> None:
        """REPLY_HDR, REPLY_PAY, REPLY_CRC: the reply frame as logical bytes on ``g_*``
        (the stuffer takes one when ``g_take``), the CRC over all but the SOF."""
        g_byte, hpos, left, wpos = s.g_byte, s.hpos, s.left, s.wpos
        with m.State("REPLY_HDR"):
            m.d.comb += [s.g_valid.eq(1), s.g_raw.eq(hpos == 0), s.crc_in.eq(g_byte)]
            with m.Switch(hpos):
                with m.Case(0):
                    m.d.comb += g_byte.eq(SOF)
                with m.Case(1):
                    m.d.comb += g_byte.eq(s.seq)
                with m.Case(2):
                    m.d.comb += g_byte.eq(s.op)
                with m.Case(3):
                    m.d.comb += g_byte.eq(s.status)
                with m.Case(4):
                    m.d.comb += g_byte.eq(left[0:8])
                with m.Default():
                    m.d.comb += g_byte.eq(left[8:16])
            with m.If(s.g_take):
                m.d.sync += hpos.eq(hpos + 1)
                with m.If(hpos != 0):
                    m.d.comb += s.crc_update.eq(1)
                with m.If(hpos == 5):
                    with m.If(left == 0):
                        m.next = "REPLY_CRC"
                    with m.Else():
                        m.next = "REPLY_PAY"

        with m.State("REPLY_PAY"):
            # READ data: a byte once the registered read holds its word
            m.d.comb += [s.g_valid.eq((s.rkind != _KIND_DATA) | s.rdata_ok), s.crc_in.eq(g_byte)]
            with m.Switch(s.rkind):
                with m.Case(_KIND_ID), m.Switch(Cat(wpos, s.idx[0:2])):
                    for index, value in enumerate(self.id_payload()):
                        with m.Case(index):
                            m.d.comb += g_byte.eq(value)
                with m.Case(_KIND_DATA):
                    m.d.comb += g_byte.eq(s.rdata.word_select(wpos, 8))
                with m.Default():
                    m.d.comb += g_byte.eq(s.count.word_select(wpos[0], 8))
            # read the buffer one cycle ahead: rd.data holds word idx (rdata a cycle later)
            m.d.comb += s.advance.eq(s.g_take & (wpos == 3))
            with m.If(s.g_take):
                m.d.sync += [wpos.eq(wpos + 1), left.eq(left - 1)]
                m.d.comb += s.crc_update.eq(1)
                with m.If(wpos == 3):
                    s.idx_to_next(m)
                with m.If(left == 1):
                    m.next = "REPLY_CRC"

        with m.State("REPLY_CRC"):
            crc = s.crc_unit.crc
            m.d.comb += [s.g_valid.eq(1), g_byte.eq(Mux(s.crc_lo, crc[0:8], crc[8:16]))]
            with m.If(s.g_take):
                m.d.sync += s.crc_lo.eq(1)
                with m.If(s.crc_lo):
                    self._finish(m, s)

    # ---- datapaths that do not depend on the state (the enables do) ------------------------

    def _datapaths(self, m: Module, s: _LinkState) -> None:
        """``idx``'s moves (the states ask for them), the bus request, and the buffer's
        addresses and write data."""
        addr, idx, rd, wr = s.addr, s.idx, s.rd, s.wr
        with m.If(s.idx_zeroes):
            m.d.sync += [idx.eq(0), s.idx_next.eq(1)]
        with m.Elif(s.idx_steps):
            m.d.sync += [idx.eq(s.idx_next), s.idx_next.eq(s.idx_next + 1)]
        word = (addr[:WORD_ADDR_BITS] + idx)[:WORD_ADDR_BITS]
        m.d.comb += [
            self.bus.we.eq(s.bwe),
            self.bus.addr.eq(Cat(word, addr[WORD_ADDR_BITS:])),
            self.bus.wdata.eq(s.rdata),
            rd.addr.eq(Mux(s.advance, s.idx_next, idx)),
            # not the word being received (no_read_collision): a READ's bus data is written
            # as the read moves on to the next word
            rd.en.eq(~wr.en | s.advance),
            wr.addr.eq(idx),
            # the receiver buffers WRITE payload words, the bus engine READ data
            wr.data.eq(Mux(s.receiving, Cat(s.wshift, s.data), s.bus_rdata)),
        ]

    def _read_register(self, m: Module, s: _LinkState) -> None:
        """The buffer's read data, registered: the block RAM's output, used directly, was
        the start of the slowest paths on the ECP5 (into the target's bus decode and the
        sequencer's multiplier, and through the reply byte select into the stuffer).
        ``rdata`` holds ``buffer[rd.addr]`` of two cycles ago; ``rdata_ok`` says that was
        word ``idx`` and no write has landed since, so a consumer waits two cycles after
        ``idx`` moves (a WRITE's bus request, a READ reply's data bytes).  ``rdata_ok`` is a
        register, decided a cycle ahead from ``idx``'s next value (the moves the states ask
        for): compared in the cycle it is used, the address of two cycles ago against
        ``idx``, it led the slowest paths of 9 of 12 ECP5 builds, through the reply's and
        the bus engine's ``advance`` into the buffer's read address (session 39).

        Without ``registered_read``, ``rdata`` is the block RAM's output, word ``idx``
        whenever it is used (``rd.addr`` runs a cycle ahead: ``idx_next`` in the cycle
        ``idx`` moves), so nobody waits: the link as it was before the register."""
        if not self.registered_read:
            m.d.comb += [s.rdata.eq(s.rd.data), s.rdata_ok.eq(1)]
            return
        addr1 = Signal.like(s.idx)  # rd.addr a cycle ago: the word rd.data holds, rdata next
        we1 = Signal()  # a buffer write a cycle ago
        m.d.sync += [s.rdata.eq(s.rd.data), addr1.eq(s.rd.addr), we1.eq(s.wr.en)]
        # (a comparison per value idx may take, the late moves selecting among their verdicts)
        holds_next_idx = Mux(s.idx_zeroes, addr1 == 0, Mux(s.idx_steps, addr1 == s.idx_next, addr1 == s.idx))
        m.d.sync += s.rdata_ok.eq(holds_next_idx & ~s.wr.en & ~we1)

    def _transmit(self, m: Module, s: _LinkState) -> None:
        """Stuffing and the output register: ``SOF`` and ``ESC`` inside a frame go out as
        ``ESC``, then the byte XOR ``ESC_XOR`` (held in ``pend``)."""
        g_byte, g_valid = s.g_byte, s.g_valid
        pend = Signal(8)  # the byte after an ESC
        pend_valid = Signal()
        load = ~self.tx.valid | self.tx.ready
        m.d.comb += s.g_take.eq(load & ~pend_valid & g_valid)
        with m.If(load):
            with m.If(pend_valid):
                m.d.sync += [self.tx.payload.eq(pend ^ ESC_XOR), self.tx.valid.eq(1),
                             pend_valid.eq(0)]
            with m.Elif(g_valid):
                with m.If(~s.g_raw & ((g_byte == SOF) | (g_byte == ESC))):
                    m.d.sync += [self.tx.payload.eq(ESC), pend.eq(g_byte), pend_valid.eq(1)]
                with m.Else():
                    m.d.sync += self.tx.payload.eq(g_byte)
                m.d.sync += self.tx.valid.eq(1)
            with m.Else():
                m.d.sync += self.tx.valid.eq(0)

    def _receive(self, m: Module, state: str, s: _LinkState) -> None:
        """Act on one unstuffed byte in receive state ``state``."""
        data, length, left, hdr, wpos, idx = s.data, s.length, s.left, s.hdr, s.wpos, s.idx
        if state == "SEQ":
            m.d.sync += s.seq.eq(data)
            m.next = "OP"
        elif state == "OP":
            m.d.sync += s.op.eq(data)
            m.next = "LEN0"
        elif state == "LEN0":
            m.d.sync += length[0:8].eq(data)
            m.next = "LEN1"
        elif state == "LEN1":
            total = Cat(length[0:8], data)
            m.d.sync += [length[8:16].eq(data), left.eq(total), hdr.eq(0), wpos.eq(0)]
            s.idx_to_zero(m)
            with m.If(total == 0):
                m.next = "CRC0"
            with m.Else():
                m.next = "PAYLOAD"
        elif state == "PAYLOAD":
            m.d.sync += [wpos.eq(wpos + 1), left.eq(left - 1), s.wshift.eq(Cat(s.wshift[8:], data))]
            with m.If(hdr != 6):
                m.d.sync += hdr.eq(hdr + 1)
            with m.If(hdr < 4):
                m.d.sync += s.addr.word_select(hdr[0:2], 8).eq(data)
            with m.Elif(hdr < 6):
                m.d.sync += s.count.word_select(hdr[0], 8).eq(data)
            # bytes 4.. are little-endian words: buffer each one as its last byte arrives
            with m.If((hdr >= 4) & (wpos == 3) & (idx < self.max_words)):
                m.d.comb += s.wr.en.eq(1)
                s.idx_to_next(m)
            with m.If(left == 1):
                m.next = "CRC0"
        elif state == "CRC0":
            m.next = "CRC1"
        elif state == "CRC1":
            m.d.sync += left.eq(idx)  # words buffered, for a WRITE
            s.idx_to_zero(m)
            m.next = "EXEC"


class LinkedTarget(wiring.Component):
    """A bus target behind a :class:`HostLink`: the top of a co-simulation or a board.

    Without ``uart`` the host side is a pair of byte streams, which is what the
    Verilator harness (``sim/harness.cpp``) bridges to TCP; with a
    :class:`~perturbo.hdl.uart.UART` it is the UART's two pins.

    Parameters
    ----------
    target : wiring.Component
        Has a ``bus`` member ``In(BusSignature)`` (for instance the ``Accelerator``).
    uart : UART, optional
        Carry the link over this UART.
    **link_options
        Passed to :class:`HostLink` (``max_words``, ``byte_timeout``, ``bus_timeout``,
        ``ident``, ``registered_read``).

    Members
    -------
    rx : ``In(stream.Signature(8))``, or ``In(1)`` with ``uart``
        From the host.
    tx : ``Out(stream.Signature(8))``, or ``Out(1)`` with ``uart``
        To the host.
    """

    def __init__(self, target: wiring.Component, *, uart: wiring.Component | None = None,
                 **link_options: int) -> None:
        if "bus" not in getattr(target, "signature", wiring.Signature({})).members:
            raise TypeError(f"target must be a component with a 'bus' member, not {target!r}")
        self.target = target
        self.uart = uart
        self.link = HostLink(**link_options)
        if uart is None:
            members = {"rx": In(stream.Signature(8)), "tx": Out(stream.Signature(8))}
        else:
            members = {"rx": In(1, init=1), "tx": Out(1, init=1)}
        super().__init__(members)

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.link = link = self.link
        m.submodules.target = self.target
        wiring.connect(m, link.bus, self.target.bus)
        if self.uart is None:
            wiring.connect(m, wiring.flipped(self.rx), link.rx)
            wiring.connect(m, link.tx, wiring.flipped(self.tx))
        else:
            m.submodules.uart = uart = self.uart
            m.d.comb += [uart.rx.eq(self.rx), self.tx.eq(uart.tx)]
            wiring.connect(m, uart.o, link.rx)
            wiring.connect(m, link.tx, uart.i)
        return m
