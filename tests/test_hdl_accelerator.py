"""The whole accelerator through its host bus, bit-exact against golden.integer (cocotb)."""

from __future__ import annotations

import pytest
from cocotb_build import SIMULATORS, run_cocotb
from hdl_configs import CONFIGS, RULE_CONFIGS, config_env

from perturbo.hdl.accelerator import Accelerator

ACCEL_CONFIGS = {**CONFIGS, **RULE_CONFIGS}


#: The configurations the whole accelerator also runs on Icarus, the second simulator: every
#: rule's term at least once (mgd-weight with momentum, alr beside mgd-weight, mgd-node
#: beside mgd-weight, target projection), in about a minute; the digits-sized ones would
#: take several minutes each there.
ICARUS_CONFIGS = ("tiny", "hybrid-alr", "hybrid-node", "tpsgd-l2")


@pytest.mark.parametrize(("name", "simulator"),
                         [(name, SIMULATORS[0]) for name in ACCEL_CONFIGS]
                         + [(name, SIMULATORS[1]) for name in ICARUS_CONFIGS])
def test_accelerator(name: str, simulator: str) -> None:
    cfg = ACCEL_CONFIGS[name]
    run_cocotb(Accelerator(cfg), "accel_top", "tb_accelerator", extra_env=config_env(cfg), big=True,
               simulator=simulator)
