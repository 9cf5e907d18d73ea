"""Test tops for the datapath units: each unit with the memories it needs and load ports.

The testbenches fill memories through the ``*_w*`` ports (one row per cycle) and read
them back through ``*_r*`` ports where the unit does not own the read port.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from perturbo.hdl.correlation import CorrelationUnit, CorrelationWalker
from perturbo.hdl.forward import ForwardEngine
from perturbo.hdl.geometry import Geometry, ceil_log2
from perturbo.hdl.memories import (
    LaneMemory,
    LanePortSignature,
    MemoryBlock,
    SignMemory,
    SignWriteSignature,
    mux_ports,
)
from perturbo.hdl.update import UpdateUnit, memory_ports


def _word_load(addr_width: int, shape) -> wiring.Signature:
    """A testbench write port of a one-word-per-address memory: ``addr``, ``data``, ``we``."""
    return wiring.Signature({"addr": Out(addr_width), "data": Out(shape), "we": Out(1)})


def _lane_load(lanes: int, addr_width: int, shape) -> dict:
    return {
        "addr": In(addr_width),
        "data": In(data.ArrayLayout(shape, lanes)),
        "we": In(lanes),
    }


class ForwardHarness(wiring.Component):
    """:class:`ForwardEngine` with its weight memories and sample buffer; ``signs`` is the
    engine's sign-memory write port, for the testbench to watch, and ``factor_read`` the
    read port of its factor memory (when it has one), for the testbench to read."""

    def __init__(self, geometry: Geometry) -> None:
        self.geometry = geo = geometry
        self.engine = ForwardEngine(geo, tag_shape=16)
        sa = ceil_log2(geo.sample_words)
        #: the engine's run parameters beyond ``delta`` (only with injected or TP layers)
        self.params = {name: In(self.engine.signature.members[name].shape)
                       for name in ("sigma", "node_delta", "target_on")
                       if name in self.engine.signature.members}
        super().__init__({
            "cmd": In(stream.Signature(self.engine.cmd_layout)),
            "delta": In(7),
            **self.params,
            "result": Out(stream.Signature(self.engine.result_layout)),
            "wload": In(wiring.Signature({k: v.flip() for k, v in
                                          _lane_load(geo.lanes, geo.row_bits,
                                                     signed(geo.weight_bits)).items()})),
            "sload": In(wiring.Signature({"addr": Out(sa), "data": Out(signed(8)),
                                          "we": Out(1)})),
            "signs": Out(SignWriteSignature(geo.lanes, geo.row_bits)),
            "seed": In(32),
            "key_req": In(stream.Signature(32)),
            "key": Out(stream.Signature(32)),
            "busy": Out(1),
            **({"factor_read": self.engine.signature.members["factor_read"]}
               if geo.factor_bits else {}),
        })

    def elaborate(self, platform: object) -> Module:
        m = Module()
        geo = self.geometry
        m.submodules.engine = eng = self.engine
        m.submodules.weights = wmem = LaneMemory(geo.lanes, geo.weight_depth,
                                                 signed(geo.weight_bits))
        # the sample buffer in `window` banks of bytes, so that a read answers a window of the
        # first layer's inputs (SampleMemory's `window`): byte `a` in bank `a % window`
        window = geo.layers[0].split
        shift = window.bit_length() - 1
        banks = []
        for b in range(window):
            smem = m.submodules[f"samples{b}"] = MemoryBlock(geo.sample_words // window, signed(8))
            m.d.comb += [
                smem.port.raddr.eq(eng.samples.raddr[shift:]),
                smem.port.ren.eq(eng.samples.ren),
                smem.port.waddr.eq(self.sload.addr[shift:]),
                smem.port.wdata.eq(self.sload.data),
                smem.port.we.eq(self.sload.we & (self.sload.addr[:shift] == b if shift else 1)),
            ]
            banks.append(smem.port.rdata)
        sample = Cat(*banks)
        if eng.registered_sample:  # as the accelerator's SampleMemory(registered=True) answers
            sample = Signal(len(sample), name="sample_late")
            with m.If(eng.samples.ren):
                m.d.sync += sample.eq(Cat(*banks))
        m.d.comb += eng.samples.rdata.eq(sample)
        wiring.connect(m, wiring.flipped(self.cmd), eng.cmd)
        wiring.connect(m, eng.result, wiring.flipped(self.result))
        wiring.connect(m, eng.signs, wiring.flipped(self.signs))
        wiring.connect(m, wiring.flipped(self.key_req), eng.key_req)
        wiring.connect(m, eng.key, wiring.flipped(self.key))
        m.d.comb += [
            eng.delta.eq(self.delta),
            eng.seed.eq(self.seed),
            self.busy.eq(eng.busy),
            wmem.port.raddr.eq(eng.weights.raddr),
            wmem.port.ren.eq(eng.weights.ren),
            eng.weights.rdata.eq(wmem.port.rdata),
            wmem.port.waddr.eq(self.wload.addr),
            wmem.port.wdata.eq(self.wload.data),
            wmem.port.we.eq(self.wload.we),
            eng.act_read.addr.eq(0),
        ]
        m.d.comb += [getattr(eng, name).eq(getattr(self, name)) for name in self.params]
        if geo.factor_bits:
            wiring.connect(m, wiring.flipped(self.factor_read), eng.factor_read)
        return m


class CorrelationHarness(wiring.Component):
    """:class:`CorrelationWalker` -> :class:`CorrelationUnit` -> G memories, with every
    memory the walker reads, each writable by the testbench.

    Memories (each only when the walker reads it, as in the accelerator):

    - the :class:`SignMemory` (``sload``: the forward engine's write port);
    - the activation and factor memories, ``{bank, word}`` addressed like the forward
      engine's (four banks; ``aload`` and ``fload`` write one word a cycle, the walker
      reads them through ``act_read`` / ``factor_read`` as it reads the engine's);
    - the sample buffer (``xload`` writes; the walker has its second read port).

    ``walk`` shows the walker's rows of terms as they go to the unit and ``done`` its
    done pulse (monitors).  ``direct`` = 1 feeds the unit from ``rows`` instead of the
    walker.  While neither is busy, ``gtest`` owns the G memories.  With ``spaced`` the
    unit trusts the walker's row spacing and does not forward (as in the accelerator);
    ``rows`` must then keep that spacing too.
    """

    def __init__(self, geometry: Geometry, spaced: bool = False) -> None:
        self.geometry = geo = geometry
        self.frontend = fe = CorrelationWalker(geo)
        self.unit = CorrelationUnit(geo.lanes, geo.row_bits, geo.grad_bits, fe.term_bits,
                                    geo.overflow, fe.min_row_spacing if spaced else None,
                                    read_latency=geo.grads_read_latency,
                                    signed_terms=fe.signed_terms)
        members = {
            "cmd": In(stream.Signature(fe.job_layout)),
            "rows": In(stream.Signature(self.unit.layout)),
            "sums": Out(stream.Signature(self.unit.sums.signature.members["payload"].shape)),
            "walk": Out(wiring.Signature({"valid": Out(1), "payload": Out(fe.layout)})),
            "done": Out(1),
            "direct": In(1),
            "busy": Out(1),
            "gtest": In(LanePortSignature(geo.lanes, geo.row_bits, signed(geo.grad_bits))),
        }
        if fe.uses_signs:
            members["sload"] = In(SignWriteSignature(geo.lanes, geo.row_bits))
        if fe.uses_acts:
            members["aload"] = In(_word_load(geo.act_addr_bits, data.ArrayLayout(signed(8), geo.lanes)))
        if geo.factor_bits:
            members["fload"] = In(_word_load(geo.act_addr_bits, fe.factor_layout))
        if fe.uses_samples:
            members["xload"] = In(_word_load(geo.sample_addr_bits, signed(8)))
        super().__init__(members)

    def elaborate(self, platform: object) -> Module:
        m = Module()
        geo = self.geometry
        m.submodules.frontend = fe = self.frontend
        m.submodules.unit = cu = self.unit
        m.submodules.grads = gmem = LaneMemory(geo.lanes, geo.weight_depth, signed(geo.grad_bits),
                                               registered=geo.register_grads)
        wiring.connect(m, wiring.flipped(self.cmd), fe.cmd)
        if fe.uses_signs:
            m.submodules.signs = signs = SignMemory(geo.lanes, geo.rows, geo.row_bits)
            wiring.connect(m, wiring.flipped(self.sload), signs.write)
            wiring.connect(m, fe.signs, signs.read)
        # the forward engine's activation and factor memories: a write port, and a read
        # port (the engine's act_read / factor_read)
        reads = []
        if fe.uses_acts:
            reads.append(("acts", data.ArrayLayout(signed(8), geo.lanes), self.aload, fe.act_read))
        if geo.factor_bits:
            reads.append(("factors", fe.factor_layout, self.fload, fe.factor_read))
        for name, shape, load, port in reads:
            mem = m.submodules[name] = Memory(shape=shape, depth=1 << geo.act_addr_bits, init=[])
            wr, rd = mem.write_port(), mem.read_port()
            m.d.comb += [wr.addr.eq(load.addr), wr.data.eq(load.data), wr.en.eq(load.we),
                         rd.addr.eq(port.addr), rd.en.eq(port.en), port.data.eq(rd.data)]
        if fe.uses_samples:
            m.submodules.samples = smem = MemoryBlock(geo.sample_words, signed(8), second_read=True)
            wiring.connect(m, fe.samples, smem.read)
            m.d.comb += [smem.port.waddr.eq(self.xload.addr), smem.port.wdata.eq(self.xload.data),
                         smem.port.we.eq(self.xload.we)]
        m.d.comb += [
            self.sums.valid.eq(cu.sums.valid), self.sums.payload.eq(cu.sums.payload),
            self.walk.valid.eq(fe.o.valid), self.walk.payload.eq(fe.o.payload),
            self.done.eq(fe.done),
        ]
        with m.If(self.direct):
            m.d.comb += [
                cu.i.valid.eq(self.rows.valid),
                cu.i.payload.eq(self.rows.payload),
                self.rows.ready.eq(cu.i.ready),
            ]
        with m.Else():
            m.d.comb += [
                cu.i.valid.eq(fe.o.valid),
                cu.i.payload.eq(fe.o.payload),
                fe.o.ready.eq(cu.i.ready),
            ]
        busy = fe.busy | cu.busy | (self.direct & self.rows.valid)
        m.d.comb += self.busy.eq(busy)
        mux_ports(m, gmem.port, [(busy, cu.grads), (None, wiring.flipped(self.gtest))])
        return m


class UpdateHarness(wiring.Component):
    """:class:`UpdateUnit` with W (and M) memories; ``*test`` own them while idle."""

    def __init__(self, geometry: Geometry) -> None:
        self.geometry = geo = geometry
        self.unit = UpdateUnit(geo)
        members = {
            "sums": In(stream.Signature(self.unit.sums.signature.members["payload"].shape)),
            "busy": Out(1),
            "lr_mult": In(8),
            **{f"{name[0]}test": In(port) for name, port in memory_ports(geo).items()},
        }
        super().__init__(members)

    def elaborate(self, platform: object) -> Module:
        m = Module()
        geo = self.geometry
        m.submodules.unit = upd = self.unit
        m.d.comb += [upd.sums.valid.eq(self.sums.valid), upd.sums.payload.eq(self.sums.payload),
                     self.sums.ready.eq(1)]
        m.d.comb += [upd.lr_mult.eq(self.lr_mult), self.busy.eq(upd.busy)]
        mems = [("weights", geo.weight_bits, self.wtest, upd.weights, geo.weights_registered)]
        if geo.momentum:
            mems.append(("momentum", geo.grad_bits, self.mtest, upd.momentum, False))
        for name, bits, test, client, registered in mems:
            mem = m.submodules[name] = LaneMemory(geo.lanes, geo.weight_depth, signed(bits),
                                                  registered=registered)
            mux_ports(m, mem.port, [(upd.busy, client), (None, wiring.flipped(test))])
        return m
