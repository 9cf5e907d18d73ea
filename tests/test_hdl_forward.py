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


def test_draw_pipes() -> None:
    """One hash pipe per started block of 32 neurons in a group of an ``mgd-weight`` layer (at
    least one), unless a drawing layer has fewer inputs than lanes: then a pipe per lane
    (the configurations above run every kind of engine)."""
    pipes = {name: Geometry(cfg).draw_pipes for name, cfg in FORWARD_CONFIGS.items()}
    assert pipes == {"tiny": 1, "digits": 1, "odd": 1, "hybrid": 4, "wide": 2, "alr": 1, "drtp": 1,
                     "tpsgd-l1": 1, "tpsgd-l2": 1, "drtp-narrow": 4, "node-narrow": 1,
                     "split": 2, "split4": 4, "split-alr": 8}
