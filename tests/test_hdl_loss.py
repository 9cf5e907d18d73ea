"""The loss unit against golden.units.loss_mse (cocotb on Verilator)."""

from __future__ import annotations

import pytest
from cocotb_build import SIMULATORS, run_cocotb
from hdl_configs import UNIT_CONFIGS, config_env

from perturbo.hdl.geometry import Geometry
from perturbo.hdl.loss import LossUnit


@pytest.mark.parametrize("sim", SIMULATORS)
@pytest.mark.parametrize("name", list(UNIT_CONFIGS))
def test_loss(name: str, sim: str) -> None:
    cfg = UNIT_CONFIGS[name]
    run_cocotb(LossUnit(Geometry(cfg), 16), "loss_top", "tb_loss", extra_env=config_env(cfg), simulator=sim)
