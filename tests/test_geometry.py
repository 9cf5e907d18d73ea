"""Where the weights sit in the lane memories (hdl/geometry.py), with and without lanes that
split the inputs: no two weights share a place, and the host's image round-trips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hdl_configs import RULE_CONFIGS

from perturbo.config import load_config, parse_config
from perturbo.hdl.geometry import Geometry, config_hash, input_split

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def digits(lanes: int, split_inputs: bool = True) -> Geometry:
    data = load_config(EXAMPLES / "digits-mgd-weight.yaml").model_dump(mode="json")
    data["hardware"] |= {"lanes": lanes, "split_inputs": split_inputs}
    return Geometry(parse_config(data))


@pytest.mark.parametrize(("lanes", "n_out", "first", "split"), [
    (8, 32, False, 1), (64, 32, False, 2), (64, 10, False, 4), (32, 10, False, 2), (8, 4, True, 2),
    (8, 2, True, 4), (16, 2, True, 4), (16, 2, False, 8), (6, 3, False, 2), (3, 1, False, 1), (1, 1, False, 1),
])
def test_input_split(lanes: int, n_out: int, first: bool, split: int) -> None:
    """The largest power of two dividing ``lanes`` with ``split * n_out <= lanes``, at most
    four in the first layer (a window of one sample word)."""
    assert input_split(lanes, n_out, first) == split


@pytest.mark.parametrize("geo", [digits(8), digits(32), digits(64), digits(64, split_inputs=False),
                                 *(Geometry(RULE_CONFIGS[name]) for name in ("split", "split4", "split-alr"))],
                         ids=["8", "32", "64", "64-unsplit", "split", "split4", "split-alr"])
def test_every_weight_has_its_own_place(geo: Geometry) -> None:
    """Every weight of every layer has a (row, lane) of its own inside the layer's rows, the
    rows that the walker masks in (:meth:`LayerGeometry.synapse_mask`), and the image
    round-trips."""
    seen: set[tuple[int, int]] = set()
    for lay in geo.layers:
        for i, j, row, lane in geo.matrix_rows(lay.index):
            assert lay.row_base <= row < lay.row_base + lay.rows and 0 <= lane < geo.lanes
            assert (row, lane) not in seen, f"layer {lay.index} weight ({i}, {j}) shares row {row} lane {lane}"
            seen.add((row, lane))
            group, token = divmod(row - lay.row_base, lay.tokens)
            assert lay.synapse_mask(group, token) >> lane & 1
        masked = sum(bin(lay.synapse_mask(g, t)).count("1") for g in range(lay.groups) for t in range(lay.tokens))
        assert masked == lay.n_out * lay.cols
    rng = np.random.default_rng(1)
    mats = [rng.integers(-1000, 1000, (lay.n_out, lay.cols)) for lay in geo.layers]
    assert all((a == b).all() for a, b in zip(geo.from_image(geo.to_image(mats)), mats, strict=True))


def test_split_rows() -> None:
    """The digits network: 98 rows at 32 lanes neuron-parallel, 82 with its output neurons on
    two lanes each, 42 at 64 lanes; the configuration hash tells the layouts apart."""
    assert (digits(32, split_inputs=False).rows, digits(32).rows, digits(64).rows) == (98, 82, 42)
    assert config_hash(digits(32).cfg) != config_hash(digits(32, split_inputs=False).cfg)
    assert config_hash(digits(8).cfg) == config_hash(digits(8, split_inputs=False).cfg)
