"""The whole accelerator through its host bus, bit-exact against golden.integer (cocotb)."""

from __future__ import annotations

import itertools

import pytest
from cocotb_build import SIMULATORS, run_cocotb
from hdl_configs import CONFIGS, RULE_CONFIGS, config_env

from perturbo.config import parse_config
from perturbo.hdl.accelerator import Accelerator
from perturbo.hdl.geometry import Geometry

#: The small configurations (the digits-sized accelerator runs whole, through its host link,
#: on the co-simulation of every shipped digits example: tests/test_verilator_backend.py).
ACCEL_CONFIGS = {"tiny": CONFIGS["tiny"], **RULE_CONFIGS}
#: tiny without the loss record and TRAIN_STREAM (``hardware.streaming: false``, what the
#: iCEBreaker builds leave out): the bus refuses LOSSES and TRAIN_STREAM; built as the
#: iCEBreaker builds it, its host bus's memory reads not pipelined (``pipelined_reads``)
_data = CONFIGS["tiny"].model_dump(mode="json")
ACCEL_CONFIGS["tiny-nostream"] = parse_config({**_data, "name": "tiny-nostream",
                                               "hardware": {**_data["hardware"], "streaming": False}})
#: tiny with an update unit half as wide as the lanes (``hardware.update_lanes``: a weight
#: row in two cycles, the step's last correlation walk held to match), with momentum; and
#: target projection (tpsgd-l2: 3 lanes, G's reads registered) with an update one lane
#: wide, three cycles a row, on Icarus too
ACCEL_CONFIGS["tiny-beats"] = parse_config({**_data, "name": "tiny-beats",
                                            "hardware": {**_data["hardware"], "update_lanes": 2}})
_tp = RULE_CONFIGS["tpsgd-l2"].model_dump(mode="json")
ACCEL_CONFIGS["tpsgd-l2-beats"] = parse_config({**_tp, "name": "tpsgd-l2-beats",
                                                "hardware": {**_tp["hardware"], "update_lanes": 1}})


#: The configurations the whole accelerator also runs on Icarus, the second simulator: every
#: rule's term at least once (alr beside mgd-weight, mgd-node beside mgd-weight with
#: momentum, target projection), in under a minute; the digits-sized ones would take
#: several minutes each there, and CI has 30.
ICARUS_CONFIGS = ("hybrid-alr", "hybrid-node", "tpsgd-l2", "split4", "tpsgd-l2-beats")
#: Steps of the long run on Verilator (configurations of fewer than 1000 weight rows).
LONG_RUN_STEPS = 100


@pytest.mark.parametrize(("name", "simulator"),
                         [(name, SIMULATORS[0]) for name in ACCEL_CONFIGS]
                         + [(name, SIMULATORS[1]) for name in ICARUS_CONFIGS])
def test_accelerator(name: str, simulator: str) -> None:
    """Three steps on both simulators; on Verilator then a longer run (100 steps of the small
    configurations, where the cursor wraps many times)."""
    cfg = ACCEL_CONFIGS[name]
    env = config_env(cfg)
    if simulator == "verilator":
        env["PERTURBO_TB_STEPS"] = str(LONG_RUN_STEPS if Geometry(cfg).rows < 1000 else 10)
    accelerator = Accelerator(cfg, pipelined_reads=name != "tiny-nostream")
    run_cocotb(accelerator, "accel_top", "tb_accelerator", extra_env=env, big=True, simulator=simulator)


def test_register_grads_needs_pipelined_reads() -> None:
    """G's registered reads answer a cycle later, which only a pipelined host bus waits for:
    a board without one (the iCEBreaker) refuses the option, naming it."""
    cfg = RULE_CONFIGS["drtp"]
    assert cfg.hardware.register_grads
    with pytest.raises(ValueError, match="hardware.register_grads"):
        Accelerator(cfg, pipelined_reads=False)
    assert isinstance(Accelerator(cfg, pipelined_reads=True), Accelerator)


def test_ring_tests_are_the_ring_distance() -> None:
    """``Sequencer.on_arc`` (three comparisons) and ``Sequencer.ring_holds`` (two sums and
    their comparisons side by side) equal the ring-distance tests they replaced,
    ``(slot - a) % count < (b - a) % count`` and ``(b - a) % count >= n``, for every ring of
    up to 9 slots (and ``n`` up to 10)."""
    from amaranth.hdl import Module, Signal
    from amaranth.sim import Simulator

    from perturbo.hdl.sequencer import Sequencer

    a, b, slot, n, count = Signal(4), Signal(4), Signal(4), Signal(4), Signal(4)
    m = Module()
    arc, holds = Signal(), Signal()
    m.d.comb += [arc.eq(Sequencer.on_arc(a, b, slot)), holds.eq(Sequencer.ring_holds(a, b, n, count))]
    sim = Simulator(m)
    wrong = []

    async def check(ctx: object) -> None:
        for c in range(1, 10):
            ctx.set(count, c)
            for va, vb in itertools.product(range(c), repeat=2):
                ctx.set(a, va)
                ctx.set(b, vb)
                for vs in range(c):
                    ctx.set(slot, vs)
                    if ctx.get(arc) != ((vs - va) % c < (vb - va) % c):
                        wrong.append(("on_arc", c, va, vb, vs))
                for vn in range(11):
                    ctx.set(n, vn)
                    if ctx.get(holds) != ((vb - va) % c >= vn):
                        wrong.append(("ring_holds", c, va, vb, vn))

    sim.add_testbench(check)
    sim.run()
    assert wrong == [], f"differs from the ring distance at (test, count, a, b, slot or n) {wrong[:5]}"
