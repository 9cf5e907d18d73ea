"""The update unit against golden.units.update_weights / momentum_step (cocotb)."""

from __future__ import annotations

import pytest
from cocotb_build import SIMULATORS, run_cocotb
from hdl_configs import UNIT_CONFIGS, config_env
from hdl_harness import UpdateHarness

from perturbo.hdl.geometry import Geometry


@pytest.mark.parametrize("sim", SIMULATORS)
@pytest.mark.parametrize("name", list(UNIT_CONFIGS))
def test_update(name: str, sim: str) -> None:
    cfg = UNIT_CONFIGS[name]
    run_cocotb(UpdateHarness(Geometry(cfg)), "update_top", "tb_update", extra_env=config_env(cfg),
               simulator=sim)
