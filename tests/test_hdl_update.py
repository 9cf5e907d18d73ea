"""The update unit against golden.units.update_weights / momentum_step (cocotb)."""

from __future__ import annotations

import pytest
from cocotb_build import SIMULATORS, run_cocotb
from hdl_configs import RULE_CONFIGS, UNIT_CONFIGS, config_env
from hdl_harness import UpdateHarness

from perturbo.config import parse_config
from perturbo.hdl.geometry import Geometry

_odd = UNIT_CONFIGS["odd"].model_dump(mode="json")
_tiny = UNIT_CONFIGS["tiny"].model_dump(mode="json")
#: and with G's reads registered (``hardware.register_grads``): momentum and a G of two
#: multiplier slices (node), no momentum and a G of one (tpsgd-l2); and a G of two slices
#: that wraps (the step narrowed in stage Q, ``UpdateUnit._narrow_step``); the top slice of
#: the product in logic (``hardware.update_products: dsp-low``), with the operands in
#: registers (odd-wide-g-dsp-low) and without (tiny-dsp-low, momentum). tiny, digits and
#: the odd-wide-g pair narrow ``U`` before the product (``update.operand_bits``), saturating
#: or wrapping.  tiny-beats and odd-beats take a row over several cycles
#: (``hardware.update_lanes``).
UPDATE_CONFIGS = {**UNIT_CONFIGS, "node": RULE_CONFIGS["node"], "tpsgd-l2": RULE_CONFIGS["tpsgd-l2"],
                  **{name: parse_config({**_odd, "name": name,
                                         "numerics": {**_odd["numerics"], "grad_bits": 30},
                                         "hardware": {**_odd["hardware"], "register_grads": True,
                                                      "update_products": products}})
                     for name, products in (("odd-wide-g", "dsp"), ("odd-wide-g-dsp-low", "dsp-low"))},
                  "tiny-dsp-low": parse_config({**_tiny, "name": "tiny-dsp-low",
                                                "hardware": {**_tiny["hardware"],
                                                             "update_products": "dsp-low"}}),
                  # an update narrower than the lanes (hardware.update_lanes): 4 lanes in two
                  # beats of 2 with momentum; 3 lanes in three beats of 1, G of two slices,
                  # the operands registered and the step narrowed (stage Q), wrapping
                  "tiny-beats": parse_config({**_tiny, "name": "tiny-beats",
                                              "hardware": {**_tiny["hardware"], "update_lanes": 2}}),
                  "odd-beats": parse_config({**_odd, "name": "odd-beats",
                                             "numerics": {**_odd["numerics"], "grad_bits": 30},
                                             "hardware": {**_odd["hardware"], "register_grads": True,
                                                          "update_lanes": 1}})}


@pytest.mark.parametrize("sim", SIMULATORS)
@pytest.mark.parametrize("name", list(UPDATE_CONFIGS))
def test_update(name: str, sim: str) -> None:
    cfg = UPDATE_CONFIGS[name]
    run_cocotb(UpdateHarness(Geometry(cfg)), "update_top", "tb_update", extra_env=config_env(cfg),
               simulator=sim)
