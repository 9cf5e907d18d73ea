"""cocotb: the correlation walker and unit of every rule against golden.units.

The walker (:class:`~perturbo.hdl.correlation.CorrelationWalker`) reads what the
forward engine and the sequencer leave for it (the sign memory, the activation and
factor memories, the sample buffer): here the testbench fills those memories with
random contents at the edges (zero inputs, -128, 127, sign of zero, gated errors at
+-255), sends random jobs (dC at the term's saturation edges, both antithetic signs,
random banks, idle gaps) and checks

- every row of terms the walker hands to the unit, against the golden unit of the
  layer's rule (``mgd_weight_terms``, ``mgd_node_terms``, ``alr_sign_terms``,
  ``target_projection_terms``), narrowed to the term width;
- G after the jobs, against ``golden.units.accumulate`` (narrow after every addition);
- a final job: its sums go out on ``sums`` and G is cleared.

A mismatch names the unit, the rule, the layer and the index (neuron, input).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable

import cocotb
import torch
from amaranth.hdl import signed
from amaranth.lib import data
from cocotb.triggers import FallingEdge
from hdl_model import matrices_from_rows, weight_rows
from hdl_tbutil import Bench, Packer, Source, config, read_rows, write_rows

from perturbo.config import Rule
from perturbo.golden import units as u
from perturbo.hdl.correlation import BIAS_INPUT, CorrelationUnit, CorrelationWalker
from perturbo.hdl.forward import ACT_BANKS
from perturbo.hdl.geometry import Geometry

cfg = config()
geo = Geometry(cfg)
FE = CorrelationWalker(geo)
#: the harness's unit trusts the walker's spacing (no forwarding, as in the accelerator)
#: or forwards (CorrelationHarness's ``spaced``)
SPACED = os.environ.get("PERTURBO_CORR_SPACED") == "1"
G_LATENCY = geo.grads_read_latency
UNIT = CorrelationUnit(geo.lanes, geo.row_bits, geo.grad_bits, FE.term_bits, geo.overflow,
                       min_spacing=FE.min_row_spacing if SPACED else None, read_latency=G_LATENCY,
                       signed_terms=FE.signed_terms)
GB, TB, LANES = geo.grad_bits, FE.term_bits, geo.lanes
LO, HI = -(1 << (GB - 1)), (1 << (GB - 1)) - 1
RULES = [lay.rule for lay in geo.layers]
TP = geo.projection
#: (layer, group, token) of every row the walker visits, in order
ROW_MAP = [(lay.index, g, t) for lay in geo.layers for g in range(lay.groups) for t in range(lay.tokens)]
ACTS = Packer(data.ArrayLayout(signed(8), LANES))
FACTORS = Packer(FE.factor_layout) if geo.factor_bits else None


def lane_terms(row: dict) -> list[int]:
    """Each lane's term of a row of terms (``term`` per lane, or ``plus``, ``minus`` and
    the lanes' ``negative`` bits: ``row_layout``'s ``signed_terms``)."""
    if FE.signed_terms:
        return [row["minus"] if row["negative"] >> k & 1 else row["plus"] for k in range(LANES)]
    return list(row["term"])


def random_terms(rng: random.Random, pick: Callable[[], int]) -> tuple[dict, list[int]]:
    """The term fields of a row from ``pick`` (one term, or with signed terms ``plus`` and
    ``minus``, random sign bits), and each lane's term."""
    if FE.signed_terms:
        fields = {"plus": pick(), "minus": pick(), "negative": rng.getrandbits(LANES)}
    else:
        fields = {"term": [pick() for _ in range(LANES)]}
    return fields, lane_terms(fields)


def rule_name(li: int) -> str:
    return f"{RULES[li].value}{' (output: delta rule)' if TP and li == geo.n_layers - 1 else ''}"


# -- the memories the walker reads, as the testbench wrote them --------------------------


class Contents:
    """Random contents of the sign, activation, factor and sample memories."""

    def __init__(self, rng: random.Random, zeros: float = 0.25) -> None:
        def byte() -> int:
            r = rng.random()
            if r < zeros:
                return 0
            return rng.choice([127, -128, 1, -1, rng.randint(-128, 127), rng.randint(0, 127)])

        def factor() -> int:
            if TP:
                return rng.choice([255, -255, 0, 1, -1, rng.randint(-255, 255)])
            if geo.factor_bits == 2:  # ALR sign(a * n): + (00), - (01), zero (10)
                return rng.choice([0b00, 0b01, 0b10])
            return rng.randint(0, 1)  # MGD node: a * s = -1

        words = 1 << geo.act_bank_bits
        self.acts = [[[byte() for _ in range(LANES)] for _ in range(words)] for _ in range(ACT_BANKS)]
        self.factors = [[[factor() for _ in range(LANES)] for _ in range(words)] for _ in range(ACT_BANKS)]
        self.samples = [byte() for _ in range(geo.sample_words)]
        self.signs = [[rng.getrandbits(LANES) for _ in range(geo.rows)] for _ in range(2)]

    async def write(self, bench: Bench) -> None:
        writes = []
        if FE.uses_signs:
            writes += [{"sload__bank": b, "sload__row": r, "sload__data": bits, "sload__en": 1}
                       for b in range(2) for r, bits in enumerate(self.signs[b])]
        for prefix, mem, packer, used in (("aload", self.acts, ACTS, FE.uses_acts),
                                          ("fload", self.factors, FACTORS, bool(geo.factor_bits))):
            if used:
                writes += [{f"{prefix}__addr": b << geo.act_bank_bits | w,
                            f"{prefix}__data": packer.pack(mem[b][w]), f"{prefix}__we": 1}
                           for b in range(ACT_BANKS) for w in range(len(mem[b]))]
        if FE.uses_samples:
            writes += [{"xload__addr": a, "xload__data": v & 0xFF, "xload__we": 1}
                       for a, v in enumerate(self.samples)]
        await bench.write_cycles(writes)
        if FE.uses_signs:
            await FallingEdge(bench.dut.clk)
            bench.dut.sload__en.value = 0

    # the golden view

    def x_aug(self, li: int, bank: int, sample_base: int) -> torch.Tensor:
        """Layer ``li``'s input as the walker reads it, extended by the bias input."""
        lay = geo.layers[li]
        if li == 0:
            x = self.samples[sample_base: sample_base + lay.n_in]
        else:
            base = geo.layers[li - 1].act_base
            x = [self.acts[bank][base + j // LANES][j % LANES] for j in range(lay.n_in)]
        return torch.tensor([*x, BIAS_INPUT], dtype=torch.int64)

    def per_neuron(self, li: int, bank: int) -> list[int]:
        lay = geo.layers[li]
        return [self.factors[bank][lay.act_base + i // LANES][i % LANES] for i in range(lay.n_out)]

    def weight_signs(self, li: int, bank: int) -> torch.Tensor:
        """``s_ij`` of layer ``li`` in sign bank ``bank`` (bit set: -1)."""
        lay = geo.layers[li]
        return torch.tensor([[1 - 2 * (self.signs[bank][row] >> lane & 1)
                              for j in range(lay.cols) for row, lane in [geo.row_of(li, i, j)]]
                             for i in range(lay.n_out)])


def golden_terms(mem: Contents, job: dict) -> list[torch.Tensor]:
    """The exact terms ``(n_out, n_in + 1)`` of every layer for one job (docs/numerics.md §6)."""
    dc = torch.tensor([job["dc"]])
    a = -1 if job["negate"] else 1
    out = []
    for li, rule in enumerate(RULES):
        if rule == Rule.MGD_WEIGHT:
            t = u.mgd_weight_terms(dc, (a * mem.weight_signs(li, job["sign_bank"]))[None])
        elif rule == Rule.MGD_NODE:  # the factor holds a * s_i; x is the baseline input
            s = torch.tensor([-1 if f & 1 else 1 for f in mem.per_neuron(li, job["bank"])])
            t = u.mgd_node_terms(dc, s[None], mem.x_aug(li, job["base_bank"], job["sample_base"])[None])
        elif rule == Rule.ALR:  # the factor holds sign(a * n_i) as (negative, zero)
            sn = torch.tensor([0 if f >> 1 & 1 else -1 if f & 1 else 1
                               for f in mem.per_neuron(li, job["bank"])])
            t = u.alr_sign_terms(dc, sn[None], mem.x_aug(li, job["bank"], job["sample_base"])[None])
        else:  # target projection: the factor is the gated error g_i
            g = torch.tensor(mem.per_neuron(li, job["bank"]))
            t = u.target_projection_terms(g[None], mem.x_aug(li, job["bank"], job["sample_base"])[None])
        out.append(t[0])
    return out


# -- monitors and helpers -----------------------------------------------------------------


class Watch:
    """Records the walker's rows of terms and its done pulses (a bench sink)."""

    def __init__(self, dut) -> None:
        self.dut = dut
        self.packer = Packer(FE.layout)
        self.rows: list[dict] = []
        self.done = 0
        self.cycle = 0
        self.seen: dict[int, int] = {}  # row -> the cycle it was last on the walker's output
        self.spacing: int | None = None  # the fewest cycles between two rows of one address

    def restart_spacing(self) -> None:
        """Measure the spacing afresh (the cycles between runs are not counted)."""
        self.seen, self.spacing = {}, None

    def drive(self) -> None:
        pass

    def sample(self) -> None:
        self.cycle += 1
        if int(self.dut.walk__valid.value):
            row = self.packer.unpack(self.dut.walk__payload.value.to_unsigned())
            self.rows.append(row)
            if row["row"] in self.seen:
                gap = self.cycle - self.seen[row["row"]]
                self.spacing = gap if self.spacing is None else min(self.spacing, gap)
            self.seen[row["row"]] = self.cycle
        self.done += int(self.dut.done.value)


async def load_g(dut, g: list[torch.Tensor]) -> None:
    dut.direct.value = 0
    await write_rows(dut, "gtest", weight_rows(geo, g), GB)


async def read_g(dut) -> list[list[int]]:
    return await read_rows(dut, "gtest", geo.weight_depth, LANES, GB, G_LATENCY)


def random_g(rng: random.Random) -> list[torch.Tensor]:
    """Random G with values at the saturation edges."""
    return [torch.tensor([[rng.choice([rng.randint(LO, HI), LO, HI, HI - 3, LO + 3, 0])
                           for _ in range(lay.cols)] for _ in range(lay.n_out)], dtype=torch.int64)
            for lay in geo.layers]


def dc_values() -> list[int]:
    """dC at the term's saturation edges (and the 32-bit ends), and where the MGD node
    product ``dC * x`` reaches them."""
    edge = 1 << (TB - 1)
    clip = [max(-(2**31), min(2**31 - 1, v)) for v in
            (edge, edge - 1, -edge, -edge - 1, edge // 127, -(edge // 127) - 1, edge // 128,
             2**31 - 1, -(2**31), 0, 1, -1)]
    return clip


def random_job(rng: random.Random, dcs: list[int]) -> dict:
    return {
        "dc": 1 if TP else rng.choice([*dcs, rng.randint(-5000, 5000), rng.getrandbits(31),
                                       -rng.getrandbits(31)]),
        "negate": rng.randint(0, 1),
        "sign_bank": rng.randint(0, 1),
        "bank": rng.randrange(ACT_BANKS),
        "base_bank": rng.randrange(ACT_BANKS),
        # the sample's first feature (the last sample included)
        "sample_base": rng.choice([0, geo.sample_depth - 1, rng.randrange(geo.sample_depth)]) * geo.n_inputs,
        "final": 0,
    }


def check_rows(watch: Watch, mem: Contents, jobs: list[dict], tag: str) -> None:
    """The walker's rows of every job against the golden terms, narrowed to the term width."""
    assert len(watch.rows) == len(jobs) * geo.rows, \
        f"correlation walker: {tag}: {len(watch.rows)} rows for {len(jobs)} jobs, golden {geo.rows} each"
    assert watch.done == len(jobs), f"correlation walker: {tag}: {watch.done} done pulses for {len(jobs)} jobs"
    for n, job in enumerate(jobs):
        terms = golden_terms(mem, job)
        for r, (li, g, t) in enumerate(ROW_MAP):
            got = watch.rows[n * geo.rows + r]
            lay = geo.layers[li]
            mask = lay.synapse_mask(g, t)
            where = f"{tag}: job {n} {job}: rule {rule_name(li)} layer {li}"
            # (a lane whose term is 0 may be left out of the mask: it adds nothing)
            assert got["row"] == r and got["mask"] & ~mask == 0 and got["final"] == job["final"], \
                (f"correlation walker row differs: {where} group {g} token {t}: rtl row {got['row']} "
                 f"mask {got['mask']:b} final {got['final']}, golden row {r} mask {mask:b} "
                 f"final {job['final']}")
            got_terms = lane_terms(got)
            for k in (k for k in range(LANES) if mask >> k & 1):
                i, j = g * lay.per_group + k // lay.split, t * lay.split + k % lay.split
                gold = int(u.narrow(terms[li][i, j], TB, geo.overflow))
                term = got_terms[k] if got["mask"] >> k & 1 else 0
                assert term == gold, (
                    f"correlation walker term differs: {where} neuron {i} input {j}: "
                    f"rtl {term} golden {gold} (exact {int(terms[li][i, j])})")
    watch.rows.clear()
    watch.done = 0


def first_g_difference(what: str, rtl: list[torch.Tensor], gold: list[torch.Tensor]) -> str | None:
    for li, (a, b) in enumerate(zip(rtl, gold, strict=True)):
        diff = (a != b).nonzero()
        if len(diff):
            i, j = (int(v) for v in diff[0])
            return (f"{what} differ: rule {rule_name(li)} layer {li} neuron {i} input {j}: "
                    f"rtl {int(a[i, j])} golden {int(b[i, j])} ({len(diff)} differ in this layer)")
    return None


def golden_g(g: list[torch.Tensor], mem: Contents, jobs: list[dict]) -> list[torch.Tensor]:
    """G after the jobs: narrow after every addition, in order."""
    per_job = [golden_terms(mem, job) for job in jobs]
    return [u.accumulate(g[li], torch.stack([t[li] for t in per_job]), GB, geo.overflow)
            for li in range(geo.n_layers)]


class GapSource(Source):
    """A job source that, with probability ``idle``, leaves the walker idle for a few
    cycles (up to a whole walk) before it offers the next job."""

    def __init__(self, bench: Bench, idle: float) -> None:
        super().__init__(bench.dut, "cmd", FE.job_layout, 0.0, random.Random(bench.rng.random()))
        self.gap_p = idle
        self.wait = 0

    def drive(self) -> None:
        if self.wait and not self.holding:
            self.wait -= int(self.ready.value)  # count the cycles the walker could take a job
            self.valid.value = 0
            return
        super().drive()

    def sample(self) -> None:
        sent = self.sent
        super().sample()
        if self.sent != sent and self.rng.random() < self.gap_p:
            self.wait = self.rng.choice([1, 2, 3, 5, geo.rows])


async def run_jobs(bench: Bench, jobs: list[dict], idle: float, tag: str) -> None:
    cmd = GapSource(bench, idle)
    bench.sources.append(cmd)
    for job in jobs:
        cmd.send(job)
    quiet = [0]  # cycles in a row with nothing left to send and the walker and unit idle

    def done() -> bool:  # (the last job is taken at the edge after the cycle it was sent in)
        quiet[0] = quiet[0] + 1 if cmd.idle_now and not int(bench.dut.busy.value) else 0
        return quiet[0] >= 2

    await bench.run(done, (geo.rows + 20) * len(jobs) * (3 if idle else 1) + 200, f"{tag}: the jobs")
    bench.sources.remove(cmd)


# -- tests --------------------------------------------------------------------------------


@cocotb.test()
@cocotb.parametrize(idle=[0.0, 0.6])
async def jobs(dut, idle: float) -> None:
    """Phases of random jobs on random G and random memory contents: back to back or with
    idle gaps; a phase that piles one sign of term on every synapse (G runs into both
    ends); a last phase whose final job hands the sums on and clears G."""
    bench = Bench(dut, ("jobs", idle))
    await bench.reset()
    rng = random.Random(repr(("jobs", idle)))
    watch = Watch(dut)
    bench.sinks.append(watch)
    g = random_g(rng)
    await load_g(dut, g)
    dcs = dc_values()
    for phase in ("edges", "random", "pile", "final"):
        mem = Contents(rng, zeros=0.4 if phase == "edges" else 0.2)
        await mem.write(bench)
        if phase == "pile":  # the longest accumulation: one term per synapse again and again
            job = random_job(rng, dcs)
            job["dc"] = 1 if TP else rng.choice([1, -1]) * rng.choice([1 << (GB - 3), HI // 3, 2**31 - 1])
            jobs_ = [dict(job) for _ in range(6)]
        elif phase == "edges":
            jobs_ = [{**random_job(rng, dcs), "dc": 1 if TP else dc} for dc in dcs]
        else:
            jobs_ = [random_job(rng, dcs) for _ in range(4 if phase == "final" else 8)]
        if phase == "final":
            jobs_[-1]["final"] = 1
            sums = bench.sink("sums", UNIT.sums.signature.members["payload"].shape, 0.0)
        watch.restart_spacing()
        await run_jobs(bench, jobs_, idle, phase)
        # the walker's promise that lets the accelerator's unit do without forwarding:
        # a row comes again min_row_spacing cycles later at the soonest (exactly, when
        # the jobs come back to back)
        assert watch.spacing is not None and watch.spacing >= FE.min_row_spacing, \
            f"walker ({phase}): the same row again after {watch.spacing} cycles, " \
            f"min_row_spacing is {FE.min_row_spacing}"
        if idle == 0.0:
            assert watch.spacing == FE.min_row_spacing, \
                f"walker ({phase}): jobs back to back, the same row again after " \
                f"{watch.spacing} cycles, not min_row_spacing {FE.min_row_spacing}"
        check_rows(watch, mem, jobs_, phase)
        g = golden_g(g, mem, jobs_)
        rows = await read_g(dut)
        if phase != "final":
            msg = first_g_difference(f"correlation unit G ({phase})", matrices_from_rows(geo, rows), g)
            assert msg is None, msg
            continue
        image = [[0] * LANES for _ in range(geo.weight_depth)]
        for got in sums.received:
            image[got["row"]] = got["g"]
        assert [got["row"] for got in sums.received] == list(range(geo.rows)), \
            "correlation unit: the final job must hand on every row once, in order"
        msg = first_g_difference("correlation unit final sums", matrices_from_rows(geo, image), g)
        assert msg is None, msg
        assert all(v == 0 for row in rows[: geo.rows] for v in row), \
            "correlation unit: G not cleared by the final job"


@cocotb.test()
async def direct_rows(dut) -> None:
    """The unit alone: any sequence of rows, the same row again 1 to ``depth - 1`` rows
    later included (the rows in the unit's pipe: 3, or 4 with a G memory that answers a
    cycle later), random masks, terms at the term width's ends, random gaps; then a final
    pass over the rows.  A unit built without forwarding (``SPACED``) gets rows spaced as
    it was promised: the same row again ``depth`` rows later at the soonest (at the
    soonest cycles too: the source's gaps only add)."""
    bench = Bench(dut, "direct")
    dut.cmd__valid.value = 0
    await bench.reset()
    rng = random.Random(9)
    rows0 = [[rng.choice([rng.randint(LO, HI), LO, HI]) for _ in range(LANES)]
             for _ in range(geo.weight_depth)]
    dut.direct.value = 0
    await write_rows(dut, "gtest", rows0, GB)
    dut.direct.value = 1
    src = bench.source("rows", UNIT.layout, 0.3)
    tlo, thi = -(1 << (TB - 1)), (1 << (TB - 1)) - 1
    model = [list(r) for r in rows0]
    # the last rows sent; the forwarding unit gets the last depth - 1 again (the rows in
    # its pipe), the other one rows depth back, never one of the depth - 1 rows before
    back = list(range(1, UNIT.depth)) if UNIT.forwarding else [UNIT.depth, UNIT.depth + 1, UNIT.depth + 2]
    recent = [-1] * back[-1]
    for _ in range(300):
        pick = rng.random()
        # (a row just sent half as often again as one further back)
        row = (recent[-back[0]] if pick < 0.3 else recent[-rng.choice(back[1:])] if pick < 0.6
               else rng.randrange(geo.weight_depth))
        while row < 0 or (not UNIT.forwarding and row in recent[1 - UNIT.depth:]):
            row = rng.randrange(geo.weight_depth)
        recent = recent[1:] + [row]
        mask = rng.getrandbits(LANES)
        fields, terms = random_terms(rng, lambda: rng.choice([rng.randint(tlo, thi), 1, -1, thi, tlo]))
        src.send({"row": row, "mask": mask, **fields})
        for k in range(LANES):
            if mask >> k & 1:
                model[row][k] = int(u.narrow(torch.tensor(model[row][k] + terms[k]), GB, geo.overflow))
    await bench.run(lambda: src.idle_now and not int(dut.busy.value), 3000, "the rows")
    dut.direct.value = 0
    got = await read_g(dut)
    for r in range(geo.weight_depth):
        for k in range(LANES):
            assert got[r][k] == model[r][k], \
                f"correlation unit differs: row {r} lane {k}: rtl {got[r][k]} golden {model[r][k]}"
    sums = bench.sink("sums", UNIT.sums.signature.members["payload"].shape, 0.0)
    dut.direct.value = 1
    order = list(range(geo.weight_depth))
    rng.shuffle(order)
    expected = {}
    for row in order:
        mask = rng.getrandbits(LANES)
        fields, terms = random_terms(rng, lambda: rng.randint(tlo, thi))
        src.send({"row": row, "mask": mask, **fields, "final": 1})
        expected[row] = [int(u.narrow(torch.tensor(model[row][k] + terms[k]), GB, geo.overflow))
                         if mask >> k & 1 else model[row][k] for k in range(LANES)]
    await bench.run(lambda: src.idle_now and not int(dut.busy.value), 3000, "the final rows")
    dut.direct.value = 0
    assert [s_["row"] for s_ in sums.received] == order, "correlation unit: final sums out of order"
    for s_ in sums.received:
        assert s_["g"] == expected[s_["row"]], \
            f"correlation unit final sums differ: row {s_['row']}: rtl {s_['g']} golden {expected[s_['row']]}"
    got = await read_g(dut)
    assert all(v == 0 for row in got for v in row), "correlation unit: G not cleared by final rows"
