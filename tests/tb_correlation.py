"""cocotb: the correlation unit, alone (any rows, repeats included) and behind the MGD
weight-perturbation front end, against golden.units (narrow after every addition)."""

from __future__ import annotations

import random

import cocotb
import torch
from cocotb.triggers import FallingEdge
from hdl_model import first_difference, matrices_from_rows, sign_writes, weight_rows
from hdl_tbutil import Bench, config, read_rows, write_rows

from perturbo.golden import units as u
from perturbo.golden.integer import layer_layouts
from perturbo.hdl.correlation import CorrelationUnit, CorrelationWalker
from perturbo.hdl.geometry import Geometry

cfg = config()
geo = Geometry(cfg)
FE = CorrelationWalker(geo)
UNIT = CorrelationUnit(geo.lanes, geo.row_bits, geo.grad_bits, FE.term_bits, geo.overflow)
GB = geo.grad_bits
LO, HI = -(1 << (GB - 1)), (1 << (GB - 1)) - 1


async def load_g(dut, rows: list[list[int]]) -> None:
    dut.direct.value = 0
    await write_rows(dut, "gtest", rows, GB)


async def read_g(dut) -> list[list[int]]:
    return await read_rows(dut, "gtest", geo.weight_depth, geo.lanes, GB)


def random_g(rng: random.Random) -> list[torch.Tensor]:
    out = []
    for lay in geo.layers:
        g = torch.tensor([[rng.choice([rng.randint(LO, HI), LO, HI, HI - 3, 0])
                           for _ in range(lay.cols)] for _ in range(lay.n_out)])
        out.append(g.to(torch.int64))
    return out


def golden_g(g: list[torch.Tensor], events: list[tuple[int, int, int]]) -> list[torch.Tensor]:
    """G after the events ``(key, negate, dC)``: narrow after every addition, in order."""
    out = []
    for li, lay in enumerate(layer_layouts(cfg)):
        keys = torch.tensor([e[0] for e in events])[:, None, None]
        a = torch.tensor([1 - 2 * e[1] for e in events])[:, None, None]
        s = u.perturbation_sign(u.draw(keys, lay.weight_indices()[None])) * a
        dcs = torch.tensor([e[2] for e in events])
        out.append(u.accumulate(g[li], u.mgd_weight_terms(dcs, s), GB, geo.overflow))
    return out


async def write_signs(dut, bank: int, key: int) -> None:
    """Fill sign bank ``bank`` with the signs of ``key``, one row per cycle."""
    for _, r, bits, _ in sign_writes(cfg, geo, key, bank):
        await FallingEdge(dut.clk)
        dut.sload__bank.value = bank
        dut.sload__row.value = r
        dut.sload__data.value = bits
        dut.sload__en.value = 1
    await FallingEdge(dut.clk)
    dut.sload__en.value = 0


@cocotb.test()
@cocotb.parametrize(idle=[0.0, 0.5])
async def mgd_weight_events(dut, idle: float) -> None:
    """Events with random keys, both antithetic signs and extreme dC, on random G; then
    events of which the last is final: its sums go out on ``sums`` and G is cleared.

    Each event's signs go into the bank the front end is not reading, as the forward
    engine's next perturbed pass writes them, while the previous event is correlated."""
    bench = Bench(dut, ("mgd", idle))
    await bench.reset()
    rng = random.Random(repr(idle))
    g = random_g(rng)
    await load_g(dut, weight_rows(geo, g))
    sums = bench.sink("sums", UNIT.sums.signature.members["payload"].shape, 0.0)
    for phase in ("plain", "final"):
        cmd = bench.source("cmd", FE.job_layout, idle)
        events = []
        edge = 1 << (FE.term_bits - 1)  # where a term saturates (or wraps)
        edges = [max(-(2**31), min(2**31 - 1, v)) for v in (edge, edge - 1, -edge, -edge - 1)]
        count = 8 if phase == "plain" else 4
        for n in range(count):
            dc = rng.choice([rng.randint(-5000, 5000), 2**31 - 1, -(2**31), 0, rng.getrandbits(31)])
            if n == 0:
                dc = 2**31 - 1 if phase == "plain" else -(2**31)
            elif phase == "plain" and n <= len(edges):
                dc = edges[n - 1]
            events.append((rng.getrandbits(32), rng.randint(0, 1), dc))
            if n >= 2:  # the bank's last reader, event n - 2, is done once n - 1 is taken
                await bench.run(lambda cmd=cmd, n=n: cmd.sent >= n - 1, (geo.rows + 40) * 4,
                                "the event before")
            writer = cocotb.start_soon(write_signs(dut, n % 2, events[-1][0]))
            await bench.run(writer.done, geo.rows + 10, "the sign writes")
            cmd.send({"sign_bank": n % 2, "negate": events[-1][1], "dc": dc,
                      "final": int(phase == "final" and n == count - 1)})
        await bench.run(lambda cmd=cmd: cmd.idle_now and not int(dut.busy.value),
                        (geo.rows + 40) * len(events) * 4, "the correlation")
        bench.sources.remove(cmd)
        g = golden_g(g, events)
        rows = await read_g(dut)
        if phase == "plain":
            assert not sums.received, "sums handed on without a final event"
            msg = first_difference("correlation accumulators G", matrices_from_rows(geo, rows), g)
            assert msg is None, msg
        else:
            image = [[0] * geo.lanes for _ in range(geo.weight_depth)]
            for got in sums.received:
                image[got["row"]] = got["g"]
            assert sorted(got["row"] for got in sums.received) == list(range(geo.rows)), \
                "the final event must hand on every row once"
            msg = first_difference("final sums", matrices_from_rows(geo, image), g)
            assert msg is None, msg
            assert all(v == 0 for row in rows[: geo.rows] for v in row), "G not cleared by the final event"


@cocotb.test()
async def direct_rows(dut) -> None:
    """Any sequence of rows, the same row back to back included, random masks and gaps."""
    bench = Bench(dut, "direct")
    await bench.reset()
    rng = random.Random(9)
    rows0 = [[rng.randint(LO, HI) for _ in range(geo.lanes)] for _ in range(geo.weight_depth)]
    await load_g(dut, rows0)
    dut.direct.value = 1
    src = bench.source("rows", UNIT.layout, 0.3)
    tb = FE.term_bits
    model = [list(r) for r in rows0]
    last = 0
    for _ in range(300):
        row = last if rng.random() < 0.4 else rng.randrange(geo.weight_depth)
        last = row
        mask = rng.getrandbits(geo.lanes)
        terms = [rng.choice([rng.randint(-(1 << (tb - 1)), (1 << (tb - 1)) - 1), 1, -1,
                             (1 << (tb - 1)) - 1]) for _ in range(geo.lanes)]
        src.send({"row": row, "mask": mask, "term": terms})
        for k in range(geo.lanes):
            if mask >> k & 1:
                model[row][k] = int(u.narrow(torch.tensor(model[row][k] + terms[k]), GB,
                                             geo.overflow))
    await bench.run(lambda: src.idle_now and not int(dut.busy.value), 3000, "the rows")
    dut.direct.value = 0
    got = await read_g(dut)
    for r in range(geo.weight_depth):
        for k in range(geo.lanes):
            assert got[r][k] == model[r][k], \
                f"correlation unit differs: row {r} lane {k}: rtl {got[r][k]} golden {model[r][k]}"
    # a final pass over the rows in random order: sums out, G cleared
    sums = bench.sink("sums", UNIT.sums.signature.members["payload"].shape, 0.0)
    dut.direct.value = 1
    order = list(range(geo.weight_depth))
    rng.shuffle(order)
    expected = {}
    for row in order:
        mask = rng.getrandbits(geo.lanes)
        terms = [rng.randint(-(1 << (tb - 1)), (1 << (tb - 1)) - 1) for _ in range(geo.lanes)]
        src.send({"row": row, "mask": mask, "term": terms, "final": 1})
        expected[row] = [int(u.narrow(torch.tensor(model[row][k] + terms[k]), GB, geo.overflow))
                         if mask >> k & 1 else model[row][k] for k in range(geo.lanes)]
    await bench.run(lambda: src.idle_now and not int(dut.busy.value), 3000, "the final rows")
    dut.direct.value = 0
    assert [s_["row"] for s_ in sums.received] == order
    for s_ in sums.received:
        assert s_["g"] == expected[s_["row"]], f"final sums differ: row {s_['row']}: " \
                                               f"rtl {s_['g']} golden {expected[s_['row']]}"
    got = await read_g(dut)
    assert all(v == 0 for row in got for v in row), "G not cleared by final rows"
