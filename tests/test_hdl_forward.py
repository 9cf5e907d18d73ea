"""The forward engine, bit-exact against golden.units (cocotb on Verilator)."""

from __future__ import annotations

import pytest
from cocotb_build import SIMULATORS, run_cocotb
from hdl_configs import FORWARD_CONFIGS, config_env
from hdl_harness import ForwardHarness

from perturbo.hdl.geometry import Geometry


@pytest.mark.parametrize("sim", SIMULATORS)
@pytest.mark.parametrize("name", list(FORWARD_CONFIGS))
def test_forward(name: str, sim: str) -> None:
    cfg = FORWARD_CONFIGS[name]
    run_cocotb(ForwardHarness(Geometry(cfg)), "forward_top", "tb_forward", extra_env=config_env(cfg),
               simulator=sim)


def test_shared_draw_choice() -> None:
    """One hash pipe exactly when no layer draws per weight and every drawing layer has at
    least ``lanes`` inputs (the configurations above run both kinds of engine)."""
    shared = {name for name, cfg in FORWARD_CONFIGS.items() if Geometry(cfg).shared_draw}
    assert shared == {"alr", "drtp", "tpsgd-l1", "tpsgd-l2", "node-narrow"}
