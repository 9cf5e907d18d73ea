"""A pass over yosys's JSON netlist, between synthesis and placement: the registers that
alone read an ECP5 block RAM's output move into the block RAM's own output register.

An ECP5 DP16KD without its output register (``REGMODE_B = "NOREG"``, the only mode
yosys's memory mapping uses: its library describes no output register) gives its word
5.83 ns after the clock in nextpnr's timing model, with the register 0.96 ns
(docs/boards.md, sessions 26 and 37).  A block RAM's word that the RTL
registers as it leaves the memory (the sample word, :class:`~perturbo.hdl.memories.SampleMemory`
with ``registered``) then still pays the 5.83 ns and the routing to a fabric flip-flop.
:func:`fold_output_registers` finds each read port whose every used output bit feeds one
flip-flop and nothing else, on the block RAM's clock, and makes those flip-flops the block
RAM's output register: same clock, their clock enable as its ``OCE``.  Registers with a
reset stay (the RTL makes those it wants folded reset-less), and so do those behind logic
(the read-during-write bypass yosys adds to a memory that keeps old-word reads) or beside
another reader of the word.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

__all__ = ["fold_output_registers"]

#: What the flip-flops' parameters must be for the block RAM's register to stand in for
#: them: the clock not inverted, and 0 from the configuration, as the block RAM's register.
_FF_FIXED = {"CLKMUX": "CLK", "REGSET": "RESET"}


def _top(netlist: dict[str, Any]) -> dict[str, Any]:
    tops = [mod for mod in netlist["modules"].values() if int(str(mod.get("attributes", {}).get("top", 0)), 2)]
    if len(tops) != 1:
        raise ValueError(f"the netlist has {len(tops)} top modules, not one")
    return tops[0]


def _readers(module: dict[str, Any]) -> dict[int, list[tuple[str, str]]]:
    """Every net bit's readers: (cell, input pin), or ("", port) for a module output."""
    readers: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for name, cell in module["cells"].items():
        for pin, bits in cell["connections"].items():
            if cell.get("port_directions", {}).get(pin) == "input":
                for bit in bits:
                    if isinstance(bit, int):
                        readers[bit].append((name, pin))
    for port, info in module.get("ports", {}).items():
        if info["direction"] != "input":
            for bit in info["bits"]:
                if isinstance(bit, int):
                    readers[bit].append(("", port))
    return readers


def _registers(cells: dict[str, Any], readers: dict[int, list[tuple[str, str]]], ram: dict[str, Any],
               sides: str) -> dict[str, str] | None:
    """The flip-flop reading each used output pin of ``ram``'s ports ``sides`` (one read),
    if every used pin has one and nothing else, all alike and on those ports' clock; else
    None."""
    params = ram["parameters"]
    for side in sides:
        if params.get(f"REGMODE_{side}", "NOREG") != "NOREG" or \
                params.get(f"CLK{side}MUX", f"CLK{side}") != f"CLK{side}":
            return None
        if ram["connections"].get(f"RST{side}", ["0"]) != ["0"]:  # (the register would take it)
            return None
    found: dict[str, str] = {}
    for pin, bits in ram["connections"].items():
        if not re.fullmatch(rf"DO[{sides}]\d+", pin) or not isinstance(bits[0], int) or not readers.get(bits[0]):
            continue
        only = readers[bits[0]]
        if len(only) != 1 or only[0][1] != "DI" or cells.get(only[0][0], {}).get("type") != "TRELLIS_FF":
            return None
        found[pin] = only[0][0]
    if not found:
        return None
    ffs = [cells[name] for name in found.values()]
    first = ffs[0]
    alike = ("CLK", "CE")  # (and no reset: _reset_less)
    for ff in ffs:
        p, c = ff["parameters"], ff["connections"]
        if any(p.get(k) != v for k, v in _FF_FIXED.items()) or not _reset_less(ff):
            return None
        if any(c.get(k) != first["connections"].get(k) for k in alike) or \
                p.get("CEMUX") != first["parameters"].get("CEMUX"):
            return None
    if any(first["connections"]["CLK"] != ram["connections"][f"CLK{side}"] for side in sides):
        return None
    return found


def _read_sides(ram: dict[str, Any]) -> tuple[str, ...]:
    """The groups of ``ram``'s ports that each carry one read: each port alone, or both
    together where a port is 36 bits wide (yosys's pseudo-dual-port mapping, whose read
    spans both ports' output pins)."""
    wide = any(int(str(ram["parameters"].get(f"DATA_WIDTH_{s}", "0")), 2) == 36 for s in "AB")
    return ("AB",) if wide else ("A", "B")


def _reset_less(ff: dict[str, Any]) -> bool:
    """Whether ``ff`` has no reset (its LSR tied low): a reset the block RAM's register
    would take from its ``RST`` pin, whose gating by the clock enable the open timing and
    bitstream databases do not pin down, so registers with one are left where they are."""
    return ff["connections"].get("LSR", ["0"]) == ["0"] and ff["parameters"].get("LSRMUX", "LSR") == "LSR"


def fold_output_registers(netlist: dict[str, Any]) -> list[str]:
    """Fold the flip-flops that alone read a DP16KD port's output into its output register,
    in ``netlist`` (yosys's ``write_json``, flattened), in place.

    Returns
    -------
    list of str
        ``"<block RAM cell>:<port>"`` of each port folded, sorted.
    """
    module = _top(netlist)
    cells = module["cells"]
    readers = _readers(module)
    folded = []
    for name, ram in list(cells.items()):
        if ram["type"] != "DP16KD":
            continue
        for sides in _read_sides(ram):
            found = _registers(cells, readers, ram, sides)
            if found is None:
                continue
            ff = cells[next(iter(found.values()))]
            # (yosys writes a string that reads as a number with a space after it: "1 ")
            cemux = str(ff["parameters"].get("CEMUX", "1")).strip()
            # (both ports' registers of a 36-bit read set alike, on one clock net: the open
            # databases do not say which port's register and enable the silicon's 36-bit
            # read takes, and whichever it is, it is this one)
            for side in sides:
                if cemux == "1":
                    ram["connections"][f"OCE{side}"] = ["1"]
                else:
                    ram["connections"][f"OCE{side}"] = ff["connections"]["CE"]
                    ram["parameters"][f"OCE{side}MUX"] = "INV" if cemux == "INV" else f"OCE{side}"
                ram["parameters"][f"REGMODE_{side}"] = "OUTREG"
            for pin, ff_name in found.items():
                ram["connections"][pin] = cells.pop(ff_name)["connections"]["Q"]
            folded.append(f"{name}:{sides}")
    return sorted(folded)
