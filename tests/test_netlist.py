"""The ECP5 netlist pass (perturbo.boards.netlist): which block RAM ports take their output
registers, on a small design yosys synthesizes for the ECP5 (seconds)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from amaranth.back import rtlil
from amaranth.hdl import Module, Signal
from amaranth.lib.memory import Memory

pytest.importorskip("amaranth_boards")
from perturbo.boards.build import tool_env, undefine_read_collisions  # noqa: E402
from perturbo.boards.netlist import fold_output_registers  # noqa: E402
from perturbo.hdl.memories import no_read_collision  # noqa: E402


class _Board:
    """A stand-in platform: elaboration for a board (no simulation check)."""


def _memory(m: Module, name: str, *, reset_less: bool = True, also_logic: bool = False,
            declared: bool = True, width: int = 16, enabled: bool = True) -> list[Signal]:
    """A 512-word memory, written on one port and read on the other, its word registered
    as it leaves (with a clock enable unless not ``enabled``); returns the ports."""
    mem = Memory(shape=width, depth=512, init=[])
    m.submodules[name] = mem
    wr, rd = mem.write_port(), mem.read_port()
    raddr, ren, waddr, wdata, we = (Signal(9, name=f"{name}_raddr"), Signal(name=f"{name}_ren"),
                                    Signal(9, name=f"{name}_waddr"), Signal(width, name=f"{name}_wdata"),
                                    Signal(name=f"{name}_we"))
    word = Signal(width, name=f"{name}_word", reset_less=reset_less)
    m.d.comb += [rd.addr.eq(raddr), rd.en.eq(ren), wr.addr.eq(waddr), wr.data.eq(wdata), wr.en.eq(we)]
    with m.If(ren if enabled else 1):
        m.d.sync += word.eq(rd.data)
    ports = [raddr, ren, waddr, wdata, we, word]
    if also_logic:  # the block RAM's word read by logic beside the register
        parity = Signal(name=f"{name}_parity")
        m.d.comb += parity.eq(rd.data.xor())
        ports.append(parity)
    if declared:
        no_read_collision(m, mem, name, _Board(), wr, [rd])
    return ports


@pytest.fixture(scope="module")
def folded(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], dict, dict]:
    """The pass over the design's netlist: (the ports folded, the netlist after, before)."""
    env = tool_env("ulx3s-85f")
    m = Module()
    ports = (_memory(m, "clean") + _memory(m, "reset", reset_less=False)
             + _memory(m, "shared", also_logic=True) + _memory(m, "bypassed", declared=False)
             + _memory(m, "wide", width=32) + _memory(m, "free", enabled=False))
    work = Path(tmp_path_factory.mktemp("netlist"))
    (work / "top.il").write_text(undefine_read_collisions(rtlil.convert(m, ports=ports, platform=_Board())))
    subprocess.run([env["YOSYS"], "-q", "-p", "read_rtlil top.il; synth_ecp5 -top top -json top.json"],
                   cwd=work, env=env, check=True)
    netlist = json.loads((work / "top.json").read_text())
    return fold_output_registers(netlist), netlist, json.loads((work / "top.json").read_text())


def _rams(netlist: dict) -> dict[str, dict]:
    cells = netlist["modules"]["top"]["cells"]
    return {name: cell for name, cell in cells.items() if cell["type"] == "DP16KD"}


def test_only_a_sole_reset_less_register_folds(folded: tuple[list[str], dict, dict]) -> None:
    """The register that alone reads the block RAM, reset-less, folds, on an 18-bit port
    (with a clock enable or without) and on a 36-bit-wide block RAM (whose read spans both
    ports' pins, so both ports' registers are set); one with a reset, one beside logic
    that reads the word too, and one behind yosys's read-during-write bypass (a memory not
    declared free of collisions) stay in the fabric."""
    ports, netlist, _ = folded
    assert ports and all((port.startswith(("clean", "free")) and port.endswith(":B"))
                         or (port.startswith("wide") and port.endswith(":AB")) for port in ports), ports
    assert {port.split(".")[0] for port in ports} == {"clean", "free", "wide"}, ports
    rams = _rams(netlist)
    assert {name.split(".")[0] for name in rams} == {"clean", "reset", "shared", "bypassed", "wide", "free"}
    assert all(int(ram["parameters"]["DATA_WIDTH_B"], 2) == 36 for name, ram in rams.items()
               if name.startswith("wide")), "the wide memory maps to 36-bit block RAMs"
    for name, ram in rams.items():
        want = "OUTREG" if name.startswith(("clean", "wide", "free")) else "NOREG"
        assert ram["parameters"]["REGMODE_B"] == want, name
        assert ram["parameters"]["REGMODE_A"] == ("OUTREG" if name.startswith("wide") else "NOREG"), name


@pytest.mark.parametrize("memory, sides", [("clean", "B"), ("free", "B"), ("wide", "AB")])
def test_folded_register_keeps_its_enable_and_nets(folded: tuple[list[str], dict, dict], memory: str,
                                                    sides: str) -> None:
    """The folded block RAM drives the register's nets from its output pins, its output
    register (both ports' for a 36-bit read) loads with the register's clock enable (and
    its polarity), and the flip-flops are gone."""
    _, netlist, before = folded
    old_cells = before["modules"]["top"]["cells"]
    cells = netlist["modules"]["top"]["cells"]
    word = set(netlist["modules"]["top"]["ports"][f"{memory}_word"]["bits"])
    old_ffs = {name: cell for name, cell in old_cells.items()
               if cell["type"] == "TRELLIS_FF" and set(cell["connections"]["Q"]) & word}
    assert len(old_ffs) == len(word), "the word's flip-flops before the pass"
    enable = {(tuple(c["connections"].get("CE", ("1",))), c["parameters"]["CEMUX"].strip())
              for c in old_ffs.values()}
    assert len(enable) == 1
    (ce, cemux), = enable
    assert cemux == "1" if memory == "free" else cemux in ("CE", "INV"), "the register's clock enable"
    driven = set()
    for name, ram in _rams(netlist).items():
        if name.startswith(memory):
            for side in sides:
                assert tuple(ram["connections"][f"OCE{side}"]) == ce, name
                if cemux != "1":
                    assert ram["parameters"][f"OCE{side}MUX"] == ("INV" if cemux == "INV" else f"OCE{side}"), name
            driven |= {bits[0] for pin, bits in ram["connections"].items() if pin.startswith("DO")}
    assert word <= driven, "the word's nets come from the block RAMs' output registers"
    assert not set(old_ffs) & set(cells), "the word's flip-flops are gone"
