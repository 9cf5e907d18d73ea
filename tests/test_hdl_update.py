"""The update unit against golden.units.update_weights / momentum_step (cocotb)."""

from __future__ import annotations

import pytest
from cocotb_build import SIMULATORS, run_cocotb
from hdl_configs import RULE_CONFIGS, UNIT_CONFIGS, config_env
from hdl_harness import UpdateHarness

from perturbo.hdl.geometry import Geometry

#: and with G's reads registered (``hardware.register_grads``): momentum and a G of two
#: multiplier slices (node), no momentum and a G of one (tpsgd-l2)
UPDATE_CONFIGS = {**UNIT_CONFIGS, "node": RULE_CONFIGS["node"], "tpsgd-l2": RULE_CONFIGS["tpsgd-l2"]}


@pytest.mark.parametrize("sim", SIMULATORS)
@pytest.mark.parametrize("name", list(UPDATE_CONFIGS))
def test_update(name: str, sim: str) -> None:
    cfg = UPDATE_CONFIGS[name]
    run_cocotb(UpdateHarness(Geometry(cfg)), "update_top", "tb_update", extra_env=config_env(cfg),
               simulator=sim)
