"""The whole accelerator through its host bus, bit-exact against golden.integer (cocotb)."""

from __future__ import annotations

import pytest
from cocotb_build import run_cocotb
from hdl_configs import CONFIGS, RULE_CONFIGS, config_env

from perturbo.hdl.accelerator import Accelerator

ACCEL_CONFIGS = {**CONFIGS, **RULE_CONFIGS}


@pytest.mark.parametrize("name", list(ACCEL_CONFIGS))
def test_accelerator(name: str) -> None:
    cfg = ACCEL_CONFIGS[name]
    run_cocotb(Accelerator(cfg), "accel_top", "tb_accelerator", extra_env=config_env(cfg), big=True)
