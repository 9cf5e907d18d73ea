"""``perturbo gen`` writes Verilog that ``verilator --lint-only -Wall`` accepts (waivers in accelerator.vlt)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from perturbo.cli import main
from perturbo.config import parse_config
from perturbo.hdl.generate import generate
from perturbo.sim.toolchain import verilator_env

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def lint(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["verilator", "--lint-only", "-Wall", "accelerator.vlt", "accelerator.v"],
                          cwd=directory, env={**os.environ, **verilator_env()},
                          capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("overrides", [
    {"network": {"layers": [8, 6, 3]}, "hardware": {"lanes": 4, "sample_depth": 32},
     "numerics": {"weight_bits": 12, "overflow": "wrap", "rounding": "floor"}},
    {"rule": {"optimizer": "momentum"}, "hardware": {"lanes": 8, "sample_depth": 256}},
], ids=["tiny-wrap-floor", "digits-momentum"])
def test_generated_verilog_is_lint_clean(overrides: dict, tmp_path: Path) -> None:
    path = generate(parse_config(overrides), tmp_path)
    assert path.read_text().count("module perturbo_accelerator(") == 1
    result = lint(tmp_path)
    assert result.returncode == 0 and "%Warning" not in result.stderr, result.stderr[-3000:]
    # every waiver says why
    assert all(line.startswith(("`verilator_config", "//", "lint_off")) for line in
               (tmp_path / "accelerator.vlt").read_text().splitlines())


def test_gen_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("network: {layers: [8, 4, 2]}\nhardware: {lanes: 2, sample_depth: 16}\n")
    assert main(["gen", str(cfg), "-o", str(tmp_path / "out")]) == 0
    info = json.loads((tmp_path / "out" / "accelerator.json").read_text())
    regs = {r["name"]: r for r in info["registers"]}
    assert regs["STEP_SAMPLES"]["reset"] == 8 and regs["SAMPLE_COUNT"]["hi"] == 16
    assert "SIGMA" not in regs and regs["TARGET_ON"]["lo"] == 1
    cfg.write_text("rule: {name: bp}\n")
    assert main(["gen", str(cfg), "-o", str(tmp_path / "out2")]) == 2
    assert "bp" in capsys.readouterr().err


def _gen_supported(path: Path) -> bool:
    from perturbo.config import load_config
    from perturbo.hdl.accelerator import SUPPORTED_RULES

    return set(load_config(path).layer_rules()) <= set(SUPPORTED_RULES)


@pytest.mark.parametrize("example", [p.name for p in sorted(EXAMPLES.glob("*.yaml"))])
def test_every_example_generates_lint_clean(example: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``perturbo gen`` on every shipped example: lint-clean Verilog under ``-Wall`` and the
    shipped waivers, or (a float baseline, rule bp) one message and exit 2."""
    path = EXAMPLES / example
    status = main(["gen", str(path), "-o", str(tmp_path)])
    if not _gen_supported(path):
        assert status == 2
        assert capsys.readouterr().err.startswith("perturbo: error: ")
        return
    assert status == 0
    result = lint(tmp_path)
    assert result.returncode == 0 and "%Warning" not in result.stderr, result.stderr[-3000:]


def test_protocol_doc_register_table_is_generated() -> None:
    """docs/protocol.md shows exactly the table that ``REGISTERS`` generates."""
    from perturbo.hdl.registers import register_table

    doc = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()
    start = doc.index("<!-- registers: generated")
    body = doc[doc.index("\n", start) + 1 : doc.index("<!-- registers: end -->")]
    assert body == register_table(), "docs/protocol.md is stale: run python -m perturbo.hdl.registers"
