"""The correlation walker and unit of every rule against golden.units (cocotb)."""

from __future__ import annotations

from functools import partial

import pytest
from cocotb_build import SIMULATORS, run_cocotb
from hdl_configs import RULE_CONFIGS, UNIT_CONFIGS, config_env
from hdl_harness import CorrelationHarness

from perturbo.hdl.correlation import CorrelationUnit, CorrelationWalker
from perturbo.hdl.geometry import Geometry

CORRELATION_CONFIGS = {**UNIT_CONFIGS, **RULE_CONFIGS}


@pytest.mark.parametrize("sim", SIMULATORS)
@pytest.mark.parametrize("name", list(CORRELATION_CONFIGS))
def test_correlation(name: str, sim: str) -> None:
    cfg = CORRELATION_CONFIGS[name]
    run_cocotb(CorrelationHarness(Geometry(cfg)), "corr_top", "tb_correlation",
               extra_env=config_env(cfg), simulator=sim)


@pytest.mark.parametrize("sim", SIMULATORS)
@pytest.mark.parametrize("name", ["odd", "drtp", "hybrid-alr"])
def test_correlation_spaced(name: str, sim: str) -> None:
    """The unit as the accelerator builds it: no forwarding, the walker's spacing trusted
    (and measured by the testbench)."""
    cfg = CORRELATION_CONFIGS[name]
    harness = CorrelationHarness(Geometry(cfg), spaced=True)
    assert not harness.unit.forwarding
    run_cocotb(harness, "corr_top_spaced", "tb_correlation",
               extra_env={**config_env(cfg), "PERTURBO_CORR_SPACED": "1"}, simulator=sim)


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_forwarding_only_when_needed() -> None:
    """Forwarding is generated for a source that may repeat a row within the unit's
    depth, and for none that cannot; the walker's spacing is rows + JOB_GAP."""
    geo = Geometry(CORRELATION_CONFIGS["odd"])
    fe = CorrelationWalker(geo)
    assert fe.min_row_spacing == geo.rows + CorrelationWalker.JOB_GAP
    unit = partial(CorrelationUnit, geo.lanes, geo.row_bits, geo.grad_bits, fe.term_bits)
    assert unit().forwarding
    depth = unit().depth
    assert depth == CorrelationUnit.LATENCY + 1
    assert unit(min_spacing=depth - 1).forwarding
    assert not unit(min_spacing=depth).forwarding
    assert not unit(min_spacing=fe.min_row_spacing).forwarding
    # a G memory that answers a cycle later: a stage more, a row more to forward
    assert unit(read_latency=2).depth == depth + 1
    assert unit(min_spacing=depth, read_latency=2).forwarding
    assert not unit(min_spacing=depth + 1, read_latency=2).forwarding
    with pytest.raises(ValueError, match="min_spacing"):
        unit(min_spacing=0)
