"""The correlation walker and unit of every rule against golden.units (cocotb)."""

from __future__ import annotations

import pytest
from cocotb_build import SIMULATORS, run_cocotb
from hdl_configs import RULE_CONFIGS, UNIT_CONFIGS, config_env
from hdl_harness import CorrelationHarness

from perturbo.hdl.geometry import Geometry

CORRELATION_CONFIGS = {**UNIT_CONFIGS, **RULE_CONFIGS}


@pytest.mark.parametrize("sim", SIMULATORS)
@pytest.mark.parametrize("name", list(CORRELATION_CONFIGS))
def test_correlation(name: str, sim: str) -> None:
    cfg = CORRELATION_CONFIGS[name]
    run_cocotb(CorrelationHarness(Geometry(cfg)), "corr_top", "tb_correlation",
               extra_env=config_env(cfg), simulator=sim)
