"""Checks run on the Verilator co-simulation by more than one test module."""

from __future__ import annotations

from perturbo.config import Config
from perturbo.hdl.bus import Space
from perturbo.hdl.geometry import Geometry
from perturbo.sim.backend import VerilatorBackend
from perturbo.verify import Difference, SideBySide


def find_corrupted_weight(cfg: Config, layer: int = 0, neuron: int = 4, col: int = 39) -> Difference:
    """Change the weight on input ``col`` (0 in every digits sample: it moves no loss and no
    other update) between steps 3 and 4: the first difference read after step 4 is that
    weight, off by what was written."""
    hw = VerilatorBackend(cfg)
    try:
        run = SideBySide(cfg, hw)
        assert (run.splits.train.x[:, col] == 0).all()
        for _ in range(3):
            assert run.advance(1) is None
        weight = int(hw.state_dict()["weights"][layer][neuron, col])
        change = -37 if weight > 0 else 37  # away from the saturation bound
        hw.link.write_word(Space.WEIGHTS, Geometry(cfg).address_of(layer, neuron, col), weight + change)
        diff = run.advance(1)
    finally:
        hw.close()
    rule = cfg.layer_rules()[layer].value
    assert diff is not None, f"{cfg.name}: the corrupted weight was not found"
    assert (diff.step, diff.what, diff.rule) == (4, "weights", rule), str(diff)
    assert (diff.layer, diff.neuron, diff.col, diff.count) == (layer, neuron, col, 1), str(diff)
    assert diff.device - diff.golden == change, str(diff)
    return diff
