"""The correlation unit and the MGD weight front end against golden.units (cocotb)."""

from __future__ import annotations

import pytest
from cocotb_build import SIMULATORS, run_cocotb
from hdl_configs import UNIT_CONFIGS, config_env
from hdl_harness import CorrelationHarness

from perturbo.hdl.geometry import Geometry


@pytest.mark.parametrize("sim", SIMULATORS)
@pytest.mark.parametrize("name", list(UNIT_CONFIGS))
def test_correlation(name: str, sim: str) -> None:
    cfg = UNIT_CONFIGS[name]
    run_cocotb(CorrelationHarness(Geometry(cfg)), "corr_top", "tb_correlation",
               extra_env=config_env(cfg), simulator=sim)
