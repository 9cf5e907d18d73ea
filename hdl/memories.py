"""Memory blocks with one read and one write port, their port signatures, and port muxing.

Every memory of the datapath is a simple dual-port RAM (one synchronous read port,
one write port), which is what block RAM offers.  A block's *client* (the forward
engine, the correlation unit, the update unit, the bus) holds the port from the
initiator side (``Out(...)``); the accelerator hands each memory to one client at a
time with :func:`mux_ports`.

Read timing: ``rdata`` is the word at the ``raddr`` presented in the previous cycle in
which ``ren`` was high (it holds otherwise).  A read and a write of the same word in the
same cycle read the old word.
"""

from __future__ import annotations

from collections.abc import Sequence

from amaranth.hdl import Module, Mux, Shape, ShapeLike, Value
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

__all__ = ["PortSignature", "LanePortSignature", "MemoryBlock", "LaneMemory", "mux_ports"]


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

    Members
    -------
    port : ``In(PortSignature(addr_width, shape))``
    """

    def __init__(self, depth: int, shape: ShapeLike, init: Sequence[int] = ()) -> None:
        self.depth = depth
        self.shape = shape
        self.addr_width = _check(depth, shape)
        self.init = list(init)
        super().__init__({"port": In(PortSignature(self.addr_width, shape))})

    def elaborate(self, platform: object) -> Module:
        m = Module()
        m.submodules.mem = mem = Memory(shape=self.shape, depth=self.depth, init=self.init)
        rd = mem.read_port()
        wr = mem.write_port()
        m.d.comb += [
            rd.addr.eq(self.port.raddr),
            rd.en.eq(self.port.ren),
            self.port.rdata.eq(rd.data),
            wr.addr.eq(self.port.waddr),
            wr.data.eq(self.port.wdata),
            wr.en.eq(self.port.we),
        ]
        return m


class LaneMemory(wiring.Component):
    """``lanes`` memories of ``depth`` words of ``shape``, addressed together.

    Members
    -------
    port : ``In(LanePortSignature(lanes, addr_width, shape))``
    """

    def __init__(self, lanes: int, depth: int, shape: ShapeLike) -> None:
        if not isinstance(lanes, int) or lanes < 1:
            raise ValueError(f"lanes must be a positive integer, not {lanes!r}")
        self.lanes = lanes
        self.depth = depth
        self.shape = shape
        self.addr_width = _check(depth, shape)
        super().__init__({"port": In(LanePortSignature(lanes, self.addr_width, shape))})

    def elaborate(self, platform: object) -> Module:
        m = Module()
        for k in range(self.lanes):
            mem = m.submodules[f"lane{k}"] = Memory(shape=self.shape, depth=self.depth, init=[])
            rd = mem.read_port()
            wr = mem.write_port()
            m.d.comb += [
                rd.addr.eq(self.port.raddr),
                rd.en.eq(self.port.ren),
                self.port.rdata[k].eq(rd.data),
                wr.addr.eq(self.port.waddr),
                wr.data.eq(self.port.wdata[k]),
                wr.en.eq(self.port.we[k]),
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
