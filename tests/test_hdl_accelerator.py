"""The whole accelerator through its host bus, bit-exact against golden.integer (cocotb)."""

from __future__ import annotations

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


#: The configurations the whole accelerator also runs on Icarus, the second simulator: every
#: rule's term at least once (alr beside mgd-weight, mgd-node beside mgd-weight with
#: momentum, target projection), in under a minute; the digits-sized ones would take
#: several minutes each there, and CI has 30.
ICARUS_CONFIGS = ("hybrid-alr", "hybrid-node", "tpsgd-l2", "split4")
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


def test_on_arc_is_the_ring_distance_test() -> None:
    """``Sequencer.on_arc`` (three comparisons) equals the ring-distance test it replaced,
    ``ring_distance(a, slot) < ring_distance(a, b)``, for every ring of up to 9 slots."""
    from amaranth.hdl import Module, Signal
    from amaranth.sim import Simulator

    from perturbo.hdl.sequencer import Sequencer

    a, b, slot = Signal(4), Signal(4), Signal(4)
    m = Module()
    arc = Signal()
    m.d.comb += arc.eq(Sequencer.on_arc(a, b, slot))
    sim = Simulator(m)
    wrong = []

    async def check(ctx: object) -> None:
        for count in range(1, 10):
            for va in range(count):
                for vb in range(count):
                    for vs in range(count):
                        ctx.set(a, va)
                        ctx.set(b, vb)
                        ctx.set(slot, vs)
                        expected = (vs - va) % count < (vb - va) % count
                        if ctx.get(arc) != expected:
                            wrong.append((count, va, vb, vs))

    sim.add_testbench(check)
    sim.run()
    assert wrong == [], f"on_arc differs from the ring distance at (count, a, b, slot) {wrong[:5]}"
