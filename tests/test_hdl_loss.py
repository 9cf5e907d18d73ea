"""The loss unit against golden.units.loss_mse (cocotb on Verilator)."""

from __future__ import annotations

import pytest
from cocotb_build import SIMULATORS, run_cocotb
from hdl_configs import UNIT_CONFIGS, config_env

from perturbo.config import Config, parse_config
from perturbo.hdl.geometry import Geometry
from perturbo.hdl.loss import SHIFTED_WALK_LANES, LossUnit

#: The unit configurations and one wide enough that the unit walks a group by shifting it
#: (``SHIFTED_WALK_LANES``): 20 outputs, a full group and one with 4 of its lanes on.
LOSS_CONFIGS: dict[str, Config] = {
    **UNIT_CONFIGS,
    "shifted": parse_config({
        "name": "shifted", "seed": 7,
        "network": {"layers": [8, 6, 20]},
        "rule": {"name": "mgd-weight", "delta": 2, "copies": 2, "batch": 2},
        "hardware": {"lanes": SHIFTED_WALK_LANES, "sample_depth": 4},
    }),
}


@pytest.mark.parametrize("sim", SIMULATORS)
@pytest.mark.parametrize("name", list(LOSS_CONFIGS))
def test_loss(name: str, sim: str) -> None:
    cfg = LOSS_CONFIGS[name]
    run_cocotb(LossUnit(Geometry(cfg), 16), "loss_top", "tb_loss", extra_env=config_env(cfg), simulator=sim)
