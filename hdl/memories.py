"""Memory blocks with one read and one write port, their port signatures, and port muxing.

Every memory of the datapath is a simple dual-port RAM (one synchronous read port,
one write port), which is what block RAM offers.  A block's *client* (the forward
engine, the correlation unit, the update unit, the bus) holds the port from the
initiator side (``Out(...)``); the accelerator hands each memory to one client at a
time with :func:`mux_ports`.

Read timing: ``rdata`` is the word at the ``raddr`` presented in the previous cycle in
which ``ren`` was high (it holds otherwise).  A read and a write of the same word in the
same cycle read the old word, except on a memory declared free of such collisions
(:func:`no_read_collision`).
"""

from __future__ import annotations

from collections.abc import Sequence

from amaranth.hdl import Array, Cat, Module, Mux, Print, Shape, ShapeLike, Signal, Value, signed
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

__all__ = [
    "PortSignature", "ReadPortSignature", "LanePortSignature", "SignWriteSignature", "SignReadSignature",
    "MemoryBlock", "SampleMemory", "LaneMemory", "SignMemory", "mux_ports",
    "NO_READ_COLLISION", "COLLISION_MESSAGE", "no_read_collision",
]

#: The attribute that marks a memory none of whose enabled synchronous reads ever meets a
#: write of the same word in the same cycle, its value the memory's declared name; a board
#: build may then let the read return anything in that case (yosys's ``COLLISION_X_MASK``,
#: :func:`perturbo.boards.build.build_plan`).
NO_READ_COLLISION = "perturbo_no_read_collision"
#: What the simulation prints on the first collision of such a memory (the co-simulation
#: fails on it: :class:`perturbo.sim.cosim.VerilatorSim`).
COLLISION_MESSAGE = "perturbo-check: read collision"


def no_read_collision(m: Module, mem: Memory, name: str, platform: object, write: object,
                      reads: Sequence[object]) -> None:
    """Declare that no enabled read of ``reads`` hits the word ``write`` writes in that cycle.

    An FPGA's block RAM returns the old word on such a collision only if synthesis adds a
    delayed copy of the write and a bypass multiplexer per read port (on the iCE40 about
    40 logic cells and 45 flip-flops for a 16-bit memory): the memories whose clients
    never collide, by the order in which the sequencer runs them, are declared so (the
    :data:`NO_READ_COLLISION` attribute on ``mem``) and a board build may do without.
    The declaration is tested, not assumed: in simulation (``platform`` None) the first
    collision prints :data:`COLLISION_MESSAGE` with ``name``, on which the co-simulation
    fails.  ``write`` and ``reads`` are ports of ``mem``; a read port's ``en`` must be high
    only when its data is used.
    """
    mem.attrs[NO_READ_COLLISION] = name  # (a board build may name the memories it trusts)
    if platform is not None:
        return
    seen = Signal(name=f"{name}_collided")  # report the first collision only
    for i, rd in enumerate(reads):
        with m.If(write.en.any() & rd.en & (rd.addr == write.addr) & ~seen):
            m.d.sync += [seen.eq(1), Print(f"{COLLISION_MESSAGE} in {name}, read port {i}, word", rd.addr)]


def _connect_ports(m: Module, mem: Memory, port: wiring.PureInterface, read: wiring.PureInterface | None, *,
                   granularity: int | None = None, no_collision: str | None, platform: object,
                   registered: bool = False) -> None:
    """Give a client's ``port`` (:class:`PortSignature` or :class:`LanePortSignature`) a read
    and a write port of ``mem`` (its writes enabled per ``granularity``), and ``read``, when
    not None, a second read port; declare them free of read collisions under the name
    ``no_collision`` (:func:`no_read_collision`) unless it is None.  With ``registered``,
    ``port``'s read data is registered every cycle as it leaves the memory."""
    rd = mem.read_port()
    wr = mem.write_port(granularity=granularity)
    m.d.comb += [
        rd.addr.eq(port.raddr),
        rd.en.eq(port.ren),
    ]
    if registered:
        # reset-less, so that it alone reads the block RAM and can be its output register
        # (perturbo.boards.netlist)
        word = Signal.like(port.rdata, name="word", reset_less=True)
        m.d.sync += word.eq(rd.data)
        m.d.comb += port.rdata.eq(word)
    else:
        m.d.comb += port.rdata.eq(rd.data)
    m.d.comb += [
        wr.addr.eq(port.waddr),
        wr.data.eq(port.wdata),
        wr.en.eq(port.we),
    ]
    reads = [rd]
    if read is not None:
        rd2 = mem.read_port()
        reads.append(rd2)
        m.d.comb += [rd2.addr.eq(read.raddr), rd2.en.eq(read.ren), read.rdata.eq(rd2.data)]
    if no_collision is not None:
        no_read_collision(m, mem, no_collision, platform, wr, reads)


class PortSignature(wiring.Signature):
    """One read and one write port of a memory, from the client's side.

    Members
    -------
    raddr : ``Out(addr_width)``
    ren : ``Out(1)``
        Read enable; ``rdata`` holds while it is low.
    rdata : ``In(shape)``
    waddr : ``Out(addr_width)``
    wdata : ``Out(shape)``
    we : ``Out(1)``
    """

    def __init__(self, addr_width: int, shape: ShapeLike) -> None:
        self.addr_width = addr_width
        self.shape = shape
        super().__init__({
            "raddr": Out(addr_width),
            "ren": Out(1),
            "rdata": In(shape),
            "waddr": Out(addr_width),
            "wdata": Out(shape),
            "we": Out(1),
        })


class ReadPortSignature(wiring.Signature):
    """A read-only port, from the client's side: ``raddr``, ``ren`` out, ``rdata`` in."""

    def __init__(self, addr_width: int, shape: ShapeLike) -> None:
        super().__init__({"raddr": Out(addr_width), "ren": Out(1), "rdata": In(shape)})


class LanePortSignature(wiring.Signature):
    """A row of ``lanes`` memories read and written at one address, from the client's side.

    Members
    -------
    raddr : ``Out(addr_width)``
    ren : ``Out(1)``
    rdata : ``In(ArrayLayout(shape, lanes))``
    waddr : ``Out(addr_width)``
    wdata : ``Out(ArrayLayout(shape, lanes))``
    we : ``Out(lanes)``
        Per-lane write enable.
    """

    def __init__(self, lanes: int, addr_width: int, shape: ShapeLike) -> None:
        self.lanes = lanes
        self.addr_width = addr_width
        self.shape = shape
        super().__init__({
            "raddr": Out(addr_width),
            "ren": Out(1),
            "rdata": In(data.ArrayLayout(shape, lanes)),
            "waddr": Out(addr_width),
            "wdata": Out(data.ArrayLayout(shape, lanes)),
            "we": Out(lanes),
        })


class SignWriteSignature(wiring.Signature):
    """The write side of a :class:`SignMemory`, from the writer's side.

    Members
    -------
    bank : ``Out(1)``
    row : ``Out(row_bits)``
    data : ``Out(lanes)``
        Bit ``k``: lane ``k``'s sign bit (1: ``s = -1``).
    en : ``Out(1)``
    """

    def __init__(self, lanes: int, row_bits: int) -> None:
        super().__init__({"bank": Out(1), "row": Out(row_bits), "data": Out(lanes), "en": Out(1)})


class SignReadSignature(wiring.Signature):
    """The read side of a :class:`SignMemory`, from the reader's side.

    Members
    -------
    bank : ``Out(1)``
    row : ``Out(row_bits)``
    en : ``Out(1)``
        Read enable; ``data`` holds while it is low.
    data : ``In(lanes)``
        The signs of the row presented in the last cycle ``en`` was high.
    """

    def __init__(self, lanes: int, row_bits: int) -> None:
        super().__init__({"bank": Out(1), "row": Out(row_bits), "en": Out(1), "data": In(lanes)})


def next_column(m: Module, last: Value, col: Value, byte: Value, word: Value, lanes: int,
                step: int | Value = 1) -> None:
    """Advance a weight-row walker by one token (in ``m.d.sync``).

    ``col`` counts the tokens of a row group; a token's first input is byte ``byte`` of
    activation word ``word`` (layer inputs are packed ``lanes`` per word), and a token holds
    ``step`` inputs (a layer's :attr:`~.geometry.LayerGeometry.split`, which divides
    ``lanes``).  After the ``last`` token (the bias's) all three restart at 0 for the next
    row group.  The forward engine and the correlation walker both read the activations
    this way.
    """
    with m.If(~last):
        m.d.sync += col.eq(col + 1)
        with m.If(byte == lanes - step):
            m.d.sync += [byte.eq(0), word.eq(word + 1)]
        with m.Else():
            m.d.sync += byte.eq(byte + step)
    with m.Else():
        m.d.sync += [col.eq(0), byte.eq(0), word.eq(0)]


def _check(depth: int, shape: ShapeLike) -> int:
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be a positive integer, not {depth!r}")
    Shape.cast(shape)
    return max(1, (depth - 1).bit_length())


class MemoryBlock(wiring.Component):
    """``depth`` words of ``shape``: one synchronous read port, one write port.

    Parameters
    ----------
    depth
        Words.
    shape
        Shape of a word.
    init
        Initial contents (default zeros).
    block_ram
        Ask synthesis for block RAM even for a memory it would build from flip-flops
        (yosys ``ram_style = "block"``): the label memory of a small sample buffer is
        64 bits, which in flip-flops costs an iCE40 about 130 logic cells.

    second_read
        Add a second read port (a second copy of the memory in an FPGA's block RAMs).
    no_collision
        The memory's name: its clients never read a word in the cycle it is written
        (:func:`no_read_collision`).  None: they may, and read the old word.
    bank_words
        A power of two: build a deeper memory as banks of that many words, each bank's
        word registered as it leaves its block RAM before the bank select (synthesis
        stacks block RAMs for depth behind a multiplexer: a 10 240-word memory's was an
        ECP5 100 MHz build's slowest path).  A read then answers a cycle later: ``rdata``
        is the word at the ``raddr`` presented two cycles before, in the last cycle in
        which ``ren`` was high (:attr:`read_latency`); not with ``second_read`` or ``init``.

    Members
    -------
    port : ``In(PortSignature(addr_width, shape))``
    read : ``In(ReadPortSignature(addr_width, shape))``
        Only with ``second_read``.
    """

    def __init__(self, depth: int, shape: ShapeLike, init: Sequence[int] = (), *,
                 block_ram: bool = False, second_read: bool = False,
                 no_collision: str | None = None, bank_words: int | None = None) -> None:
        self.depth = depth
        self.no_collision = no_collision
        self.shape = shape
        self.addr_width = _check(depth, shape)
        self.init = list(init)
        self.block_ram = block_ram
        self.second_read = second_read
        self.banks = 1 if bank_words is None else -(-depth // bank_words)
        if self.banks > 1 and (second_read or self.init or bank_words & (bank_words - 1)):
            raise ValueError("banks need a power-of-two bank_words, one read port and no init")
        self.bank_words = bank_words
        #: Cycles from a read's ``raddr`` (with ``ren``) to its ``rdata``.
        self.read_latency = 2 if self.banks > 1 else 1
        members = {"port": In(PortSignature(self.addr_width, shape))}
        if second_read:
            members["read"] = In(ReadPortSignature(self.addr_width, shape))
        super().__init__(members)

    def elaborate(self, platform: object) -> Module:
        m = Module()
        if self.banks > 1:
            self._banks(m, platform)
            return m
        attrs = {"ram_style": "block"} if self.block_ram else None
        m.submodules.mem = mem = Memory(shape=self.shape, depth=self.depth, init=self.init,
                                        attrs=attrs)
        _connect_ports(m, mem, self.port, self.read if self.second_read else None,
                       no_collision=self.no_collision, platform=platform)
        return m

    def _banks(self, m: Module, platform: object) -> None:
        """The banks: the address's high bits choose one; each read stage advances with
        ``ren`` (the data hold while it is low)."""
        port, low = self.port, self.bank_words.bit_length() - 1
        ren1 = Signal()  # the banks' outputs are a read newer than their registers
        bank1, bank2 = Signal(range(self.banks)), Signal(range(self.banks))
        m.d.sync += ren1.eq(port.ren)
        with m.If(port.ren):
            m.d.sync += bank1.eq(port.raddr[low:])
        with m.If(ren1):
            m.d.sync += bank2.eq(bank1)
        words = []
        for b in range(self.banks):
            depth = min(self.bank_words, self.depth - b * self.bank_words)
            mem = m.submodules[f"bank{b}"] = Memory(shape=self.shape, depth=depth, init=[])
            rd, wr = mem.read_port(), mem.write_port()
            # reset-less, so that it alone reads the block RAM and can be its output register
            # (perturbo.boards.netlist; the 16-lane build's slowest path at seed 1 was a bank's
            # block RAM into its word)
            word = Signal.like(rd.data, name=f"bank{b}_word", reset_less=True)
            with m.If(ren1):
                m.d.sync += word.eq(rd.data)
            words.append(word)
            m.d.comb += [
                rd.addr.eq(port.raddr[:low]), rd.en.eq(port.ren & (port.raddr[low:] == b)),
                wr.addr.eq(port.waddr[:low]), wr.data.eq(port.wdata),
                wr.en.eq(port.we & (port.waddr[low:] == b)),
            ]
            if self.no_collision is not None:
                no_read_collision(m, mem, f"{self.no_collision}.bank{b}", platform, wr, [rd])
        m.d.comb += port.rdata.eq(Array(words)[bank2])


def window_shape(window: int) -> ShapeLike:
    """A read of ``window`` INT8 inputs: ``signed(8)`` for one."""
    return signed(8) if window == 1 else data.ArrayLayout(signed(8), window)


class SampleMemory(wiring.Component):
    """The sample buffer: ``words`` 32-bit words of four INT8 each, read by the datapath a
    byte at a time.

    The host writes four features per bus word (docs/protocol.md, ``SAMPLES``): a quarter
    of the bytes on the link, and one memory write per word.  The datapath reads byte
    ``a`` (``a // 4`` is the word, ``a % 4`` the byte, little-endian) with the read timing
    of :class:`MemoryBlock`: the byte select is registered with the address, so the data
    still comes one cycle after ``raddr``.  The host shares the first read port (idle
    only: ``host_owns``); its writes use the write port, which no datapath client needs,
    so that they may go on while a run reads other samples (``Command.TRAIN_STREAM``).

    With ``second_read`` the memory holds 16-bit halfwords (``2 * words`` of them): an
    iCE40 block RAM is at most 16 bits wide, so 32-bit words take two of them side by
    side, half empty below 256 words, and the second read port doubles that (the digits
    buffer of 8 samples, 128 words, took 4 block RAMs where 2 hold it).  A host write then
    writes its low half at once and its high half in the next cycle (the bus leaves a
    cycle between two requests: the ``ack`` cycle); a host read (idle only) reads the low
    half on the first port and the high half on the second, which only the running
    correlation walker uses.

    With ``registered`` the first read port's word is registered as it leaves the block
    RAM, before the byte select (an ECP5 block RAM's output through the select was the
    slowest path at 100 MHz): ``port.rdata`` is then the byte of the address presented two
    ``port.ren`` cycles before, both stages advancing only with ``port.ren`` while the
    datapath owns the port (while ``host_owns`` the word loads with the host's ``ren``).
    Without ``second_read`` the host reads that register: ``host.rdata`` answers a cycle
    after the block RAM
    (:attr:`host_read_latency` 2), and the block RAM's output has the register as its only
    reader, which an ECP5 build folds into the block RAM's own output register
    (:func:`perturbo.boards.netlist.fold_output_registers`).

    With ``window`` (a power of two, at most a memory word's bytes) the first read port
    answers ``window`` consecutive bytes from an address aligned to ``window``: the inputs
    of a token of a first layer whose neurons take ``window`` lanes each
    (:attr:`~.geometry.LayerGeometry.split`).

    Members
    -------
    port : ``In(ReadPortSignature(byte_bits, signed(8)))``
        The forward engine's byte reads (``ArrayLayout(signed(8), window)`` with a window).
    read : ``In(ReadPortSignature(byte_bits, signed(8)))``
        Only with ``second_read``: the correlation walker's.
    host : ``In(PortSignature(addr_width, 32))``
        Word reads (while ``host_owns``) and writes.
    host_owns : ``In(1)``
        The first read port reads ``host.raddr`` instead of ``port.raddr``.
    """

    def __init__(self, words: int, *, second_read: bool = False, registered: bool = False,
                 window: int = 1) -> None:
        self.words = words
        self.registered = registered
        #: cycles from ``host.raddr`` to ``host.rdata`` (the bus's registered spaces take 2)
        self.host_read_latency = 2 if registered and not second_read else 1
        self.addr_width = _check(words, 32)
        self.byte_bits = self.addr_width + 2
        self.second_read = second_read
        if window & (window - 1) or not 1 <= window <= (2 if second_read else 4):
            raise ValueError(f"window must be a power of two of at most a memory word's bytes, not {window!r}")
        self.window = window
        self.window_shape = window_shape(window)
        members = {
            "port": In(ReadPortSignature(self.byte_bits, self.window_shape)),
            "host": In(PortSignature(self.addr_width, 32)),
            "host_owns": In(1),
        }
        if second_read:
            members["read"] = In(ReadPortSignature(self.byte_bits, signed(8)))
        super().__init__(members)

    def elaborate(self, platform: object) -> Module:
        m = Module()
        halves = self.second_read
        width = 16 if halves else 32
        sel_bits = (width // 8 - 1).bit_length()  # the byte within a memory word
        m.submodules.mem = mem = Memory(shape=width, depth=self.words * 32 // width, init=[])
        wr = mem.write_port()
        host = self.host
        if halves:
            high = Signal(16)
            high_addr = Signal(self.addr_width)
            high_due = Signal()  # the high half of the last cycle's write
            m.d.sync += high_due.eq(host.we)
            with m.If(host.we):
                m.d.sync += [high.eq(host.wdata[16:]), high_addr.eq(host.waddr)]
            m.d.comb += [
                wr.addr.eq(Mux(high_due, Cat(1, high_addr), Cat(0, host.waddr))),
                wr.data.eq(Mux(high_due, high, host.wdata[:16])),
                wr.en.eq(host.we | high_due),
            ]
        else:
            m.d.comb += [wr.addr.eq(host.waddr), wr.data.eq(host.wdata), wr.en.eq(host.we)]

        def byte_reader(rd: object, client: wiring.PureInterface, host_addr: Value | None,
                        registered: bool = False, window: int = 1) -> Value:
            """``client``'s byte reads on ``rd``; the host's while idle if ``host_addr``;
            the word registered before the byte select if ``registered``.  Returns the word
            (the registered one if ``registered``)."""
            select = Signal(sel_bits, name="select")
            with m.If(client.ren):
                m.d.sync += select.eq(client.raddr[:sel_bits])
            word_addr = client.raddr[sel_bits:]
            ren = client.ren
            if host_addr is not None:
                word_addr = Mux(self.host_owns, host_addr, word_addr)
                ren = Mux(self.host_owns, host.ren, client.ren)
            data = rd.data
            if registered:  # a stage more, which advances with the reads (the host's too)
                # (reset-less, so that an ECP5 build may fold it into the block RAM's output
                # register, which has no reset of its own there: boards.netlist)
                data = Signal.like(rd.data, name="word", reset_less=True)
                select_late = Signal(sel_bits, name="select_late")
                with m.If(ren):
                    m.d.sync += data.eq(rd.data)
                with m.If(client.ren):
                    m.d.sync += select_late.eq(select)
                select = select_late
            m.d.comb += [
                rd.addr.eq(word_addr),
                rd.en.eq(ren),
                client.rdata.eq(data.word_select(select if window == 1 else select[window.bit_length() - 1:],
                                                 8 * window)),
            ]
            return data

        rd = mem.read_port()
        if halves:
            rd2 = mem.read_port()
            byte_reader(rd, self.port, Cat(0, host.raddr), self.registered, self.window)
            byte_reader(rd2, self.read, Cat(1, host.raddr))
            m.d.comb += host.rdata.eq(Cat(rd.data, rd2.data))
        else:
            m.d.comb += host.rdata.eq(byte_reader(rd, self.port, host.raddr, self.registered, self.window))
        # the host writes samples while idle, or (TRAIN_STREAM) ones no run reads yet
        no_read_collision(m, mem, "samples", platform, wr, [rd, rd2] if halves else [rd])
        return m


class LaneMemory(wiring.Component):
    """``lanes`` words of ``shape`` side by side in each of ``depth`` rows, addressed together.

    Parameters
    ----------
    second_read
        Add a second read port (a second copy of each memory in an FPGA's block RAMs).
    second_read_bits
        With ``second_read``: the second port reads only the top ``second_read_bits`` bits
        of each word, from a copy that holds only those (the forward engine multiplies a
        16-bit master weight's top 8 bits: at 64 lanes 16 block RAMs fewer, and half the
        write data wires into the copy, on a device whose block RAM rows congest).
    no_collision
        The memories' name: their clients never read a word in the cycle it is written
        (:func:`no_read_collision`).  None: they may, and read the old word.
    registered
        ``port``'s read data is registered every cycle as it leaves the block RAM, so it
        answers two cycles after ``raddr`` and ``ren`` (:attr:`read_latency`), and no logic
        sits between the block RAM's slow output and that register (an ECP5 DP16KD's
        unregistered output takes 5.6 ns; the G memory's at 16 lanes is then routed
        across the chip: docs/boards.md).

    Members
    -------
    port : ``In(LanePortSignature(lanes, addr_width, shape))``
    read : ``In(ReadPortSignature(addr_width, ArrayLayout(read_shape, lanes)))``
        Only with ``second_read``; ``read_shape`` is ``shape``, or its top
        ``second_read_bits`` bits (as signed as ``shape``).
    """

    def __init__(self, lanes: int, depth: int, shape: ShapeLike, *, second_read: bool = False,
                 second_read_bits: int | None = None, no_collision: str | None = None,
                 registered: bool = False) -> None:
        if not isinstance(lanes, int) or lanes < 1:
            raise ValueError(f"lanes must be a positive integer, not {lanes!r}")
        self.lanes = lanes
        self.depth = depth
        self.shape = shape
        self.addr_width = _check(depth, shape)
        self.second_read = second_read
        width = Shape.cast(shape).width
        if second_read_bits is not None and not (second_read and 0 < second_read_bits <= width):
            raise ValueError(f"second_read_bits must be 1..{width} with second_read, not {second_read_bits!r}")
        #: the bits the second read port returns: ``shape``'s top ones
        self.read_shape = Shape(second_read_bits or width, Shape.cast(shape).signed)
        self.no_collision = no_collision
        self.registered = registered
        #: cycles from ``port``'s read address to its data
        self.read_latency = 2 if registered else 1
        members = {"port": In(LanePortSignature(lanes, self.addr_width, shape))}
        if second_read:
            members["read"] = In(ReadPortSignature(self.addr_width, data.ArrayLayout(self.read_shape, lanes)))
        super().__init__(members)

    def elaborate(self, platform: object) -> Module:
        m = Module()
        narrow_copy = self.second_read and self.read_shape.width < Shape.cast(self.shape).width
        # One memory ``lanes`` words wide, with a write enable per lane: a block RAM then
        # holds several lanes side by side (an ECP5 DP16KD four INT8 weights, written with
        # its byte enables), where a memory per lane took a block RAM each, however few of
        # its words the network used (the digits network's 16-bit weights at 64 lanes, two
        # read ports: 64 block RAMs against 128).
        m.submodules.mem = mem = Memory(shape=data.ArrayLayout(self.shape, self.lanes),
                                        depth=self.depth, init=[])
        _connect_ports(m, mem, self.port, self.read if self.second_read and not narrow_copy else None,
                       granularity=1, no_collision=self.no_collision, platform=platform,
                       registered=self.registered)
        if narrow_copy:
            self._narrow_copy(m, platform)
        return m

    def _narrow_copy(self, m: Module, platform: object) -> None:
        """The second read port's own memory: every write's top bits, written with it."""
        top = Shape.cast(self.shape).width - self.read_shape.width
        m.submodules.top_bits = mem = Memory(shape=data.ArrayLayout(self.read_shape, self.lanes),
                                             depth=self.depth, init=[])
        wr = mem.write_port(granularity=1)
        rd = mem.read_port()
        port, read = self.port, self.read
        m.d.comb += [
            wr.addr.eq(port.waddr),
            wr.en.eq(port.we),
            *(wr.data[k].eq(Value.cast(port.wdata[k])[top:]) for k in range(self.lanes)),
            rd.addr.eq(read.raddr),
            rd.en.eq(read.ren),
            read.rdata.eq(rd.data),
        ]
        if self.no_collision is not None:
            no_read_collision(m, mem, self.no_collision, platform, wr, [rd])


class SignMemory(wiring.Component):
    """The perturbation signs of two perturbed passes: ``lanes`` bits per weight row, two banks.

    The forward engine writes each row's sign bits as it draws them; the correlation
    walker reads them back once the pass's ``dC`` is known, while the next perturbed
    pass writes the other bank.  Keeping ``rows * lanes * 2`` bits costs less than a second
    set of hash pipes replaying the draws (a :class:`~.random.Draw` per lane), and the
    values are the same.  Bank ``b`` of row ``r`` is word ``b * rows + r``, so the memory
    holds ``2 * rows`` words, not a power of two (at one lane the digits network's 2 x 2410
    bits fill three iCE40 block RAMs instead of four).

    Members
    -------
    write : ``In(SignWriteSignature(lanes, row_bits))``
    read : ``In(SignReadSignature(lanes, row_bits))``
    """

    def __init__(self, lanes: int, rows: int, row_bits: int) -> None:
        if not isinstance(lanes, int) or lanes < 1:
            raise ValueError(f"lanes must be a positive integer, not {lanes!r}")
        if not isinstance(rows, int) or not 1 <= rows <= 1 << row_bits:
            raise ValueError(f"rows must be an integer 1..2**row_bits, not {rows!r}")
        self.lanes, self.rows, self.row_bits = lanes, rows, row_bits
        super().__init__({
            "write": In(SignWriteSignature(lanes, row_bits)),
            "read": In(SignReadSignature(lanes, row_bits)),
        })

    def elaborate(self, platform: object) -> Module:
        m = Module()
        rows = self.rows
        m.submodules.mem = mem = Memory(shape=self.lanes, depth=2 * rows, init=[])
        rd = mem.read_port()
        wr = mem.write_port()

        def address(bank: Value, row: Value) -> Value:
            return Mux(bank, row + rows, row)[: rd.addr.shape().width]

        m.d.comb += [
            wr.addr.eq(address(self.write.bank, self.write.row)),
            wr.data.eq(self.write.data),
            wr.en.eq(self.write.en),
            rd.addr.eq(address(self.read.bank, self.read.row)),
            rd.en.eq(self.read.en),
            self.read.data.eq(rd.data),
        ]
        return m


def mux_ports(m: Module, target: wiring.PureInterface,
              sources: Sequence[tuple[Value | None, wiring.PureInterface]]) -> None:
    """Drive a memory's ``target`` port from the first of ``sources`` whose condition holds.

    ``sources`` are ``(condition, client_port)`` pairs in priority order; a condition of
    None always holds (a default).  With no condition true, every output of the port is 0.
    Every client sees the memory's read data.
    """
    sig = target.signature.flip()  # the client's view
    for name, member in sig.members.items():
        tgt = getattr(target, name)
        if member.flow == Out:
            value: Value = Value.cast(0)
            for cond, src in reversed(list(sources)):
                val = Value.cast(getattr(src, name))
                value = val if cond is None else Mux(cond, val, value)
            m.d.comb += tgt.eq(value)
        else:
            for _, src in sources:
                m.d.comb += getattr(src, name).eq(tgt)
