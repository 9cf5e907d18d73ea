# amaranth: UnusedElaboratable=no
# (the parameter checks below build components and never elaborate them, on purpose)
"""The correlation front ends (hdl/alr.py, hdl/node.py, hdl/projection.py) against golden.units.

Each front end is generated for every configuration below, built once per
configuration with Verilator (cached in .pytest-build/) and driven by its cocotb
testbench (tests/tb_*.py): random stimulus crossed with valid gaps and
backpressure, edge cases, bit-exact comparison with the golden unit functions.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import pytest
import torch
from cocotb_build import SIMULATORS, run_cocotb

from perturbo.config import Overflow
from perturbo.golden import units as u
from perturbo.hdl.alr import AlrSignTerms
from perturbo.hdl.frontend import term_width
from perturbo.hdl.node import MgdNodeTerms
from perturbo.hdl.projection import TargetProjectionTerms


@dataclass(frozen=True)
class FrontendConfig:
    """One front-end build: lanes, G width and overflow mode (plus projection sizes)."""

    lanes: int
    grad_bits: int
    overflow: str
    classes: int = 10
    max_width: int = 40

    @property
    def id(self) -> str:
        return f"lanes{self.lanes}-g{self.grad_bits}-{self.overflow}"

    def env(self) -> dict[str, str]:
        return {"FRONTEND_CFG": json.dumps(asdict(self))}


CONFIGS = [
    FrontendConfig(lanes=4, grad_bits=32, overflow="saturate"),
    FrontendConfig(lanes=8, grad_bits=20, overflow="wrap", classes=7, max_width=64),
    FrontendConfig(lanes=3, grad_bits=16, overflow="saturate", classes=12, max_width=20),
]


@pytest.mark.parametrize("sim", SIMULATORS)
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.id)
def test_alr_sign_terms(cfg: FrontendConfig, sim: str) -> None:
    dut = AlrSignTerms(lanes=cfg.lanes, grad_bits=cfg.grad_bits, overflow=cfg.overflow)
    run_cocotb(dut, "alr_frontend", "tb_alr", extra_env=cfg.env(), simulator=sim)


@pytest.mark.parametrize("sim", SIMULATORS)
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.id)
def test_mgd_node_terms(cfg: FrontendConfig, sim: str) -> None:
    dut = MgdNodeTerms(lanes=cfg.lanes, grad_bits=cfg.grad_bits, overflow=cfg.overflow)
    run_cocotb(dut, "node_frontend", "tb_node", extra_env=cfg.env(), simulator=sim)


@pytest.mark.parametrize("sim", SIMULATORS)
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.id)
def test_target_projection_terms(cfg: FrontendConfig, sim: str) -> None:
    dut = TargetProjectionTerms(lanes=cfg.lanes, classes=cfg.classes, max_width=cfg.max_width,
                                grad_bits=cfg.grad_bits, overflow=cfg.overflow)
    run_cocotb(dut, "projection_frontend", "tb_projection", extra_env=cfg.env(), simulator=sim)


# -- fast checks, no simulator ----------------------------------------------------------


@pytest.mark.parametrize("overflow", list(Overflow))
@pytest.mark.parametrize("grad_bits", [16, 20, 32])
def test_narrowed_terms_leave_g_unchanged(overflow: Overflow, grad_bits: int) -> None:
    """The front ends' term narrowing (to grad_bits + 1) is invisible to G += term."""
    gen = torch.Generator().manual_seed(grad_bits)
    bits = term_width(40, grad_bits)
    lo, hi = -(1 << (grad_bits - 1)), (1 << (grad_bits - 1)) - 1
    scale = [1 << 8, 1 << (grad_bits - 2), 1 << grad_bits, 1 << 38]
    for s in scale:
        terms = torch.randint(-s, s + 1, (64, 5, 7), generator=gen, dtype=torch.int64)
        for g0 in (0, lo, hi):
            g = torch.full((5, 7), g0, dtype=torch.int64)
            exact = u.accumulate(g, terms, grad_bits, overflow)
            narrowed = u.accumulate(g, u.narrow(terms, bits, overflow), grad_bits, overflow)
            assert torch.equal(exact, narrowed), (s, g0)


@pytest.mark.parametrize("make", [
    lambda: AlrSignTerms(lanes=0),
    lambda: AlrSignTerms(lanes=4, grad_bits=8),
    lambda: MgdNodeTerms(lanes=4, overflow="clip"),
    lambda: TargetProjectionTerms(lanes=4, classes=0, max_width=8),
])
def test_parameters_are_checked(make) -> None:
    with pytest.raises(ValueError, match="must be"):
        make()


def test_term_widths() -> None:
    assert AlrSignTerms(lanes=2).term_bits == 33
    assert AlrSignTerms(lanes=2, grad_bits=20).term_bits == 21
    assert MgdNodeTerms(lanes=2).term_bits == 33
    assert MgdNodeTerms(lanes=2, grad_bits=40).term_bits == 40
    assert TargetProjectionTerms(lanes=2, classes=10, max_width=8, grad_bits=16).term_bits == 16
