"""How far placement alone moves a build's Fmax: one board-table row built with several
nextpnr seeds, each seed's Fmax and slowest path, and their median.

One build's Fmax is one draw: builds of the same netlist with different placement seeds
have differed by up to 25 MHz on the ULX3S-85F (docs/boards.md, sessions 21 and 26), more
than most single-path RTL changes gain.  Judge an RTL change by the medians of this
script on each side, not by one seed.

Usage::

    python bench/fmax_seeds.py "8 lanes (the example)" --seeds 1 2 3
    python bench/fmax_seeds.py "16 lanes" --seeds 1 2 3 --placer static
    python bench/fmax_seeds.py "16 lanes" --seeds 1 2 3 --timing-weight 20

The row is a label of ``bench/board_table.py`` (its rows: the ULX3S at 8 to 64 lanes, the
iCEBreaker, the 8-lane inference-only build).  Every build is cached
(:func:`perturbo.boards.build`), so seed 1 with the board's placer is the table's own
build, and a second run only reads the reports.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from board_table import rows, variant  # noqa: E402

from perturbo.boards import build  # noqa: E402
from perturbo.boards.report import PLACERS  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    table_rows = {row.label: row for row in rows([8, 16, 32, 64], None)}
    parser.add_argument("row", choices=list(table_rows), help="a row of bench/board_table.py")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="nextpnr seeds (default 1 2 3)")
    parser.add_argument("--placer", choices=PLACERS, default=None,
                        help="nextpnr's placer (default the board's for the lane count)")
    parser.add_argument("--timing-weight", type=int, default=None, metavar="W",
                        help="the heap placer's timing weight (default the row's "
                             "hardware.placement_timing_weight)")
    args = parser.parse_args(argv)
    row = table_rows[args.row]
    cfg = row.cfg if args.timing_weight is None else variant(row.cfg, placement_timing_weight=args.timing_weight)
    weight = cfg.hardware.placement_timing_weight
    print(f"{row.board}, {row.label}, placer {args.placer or 'the board default'}, "
          f"timing weight {weight or 'nextpnr default'}\n")
    print("| seed | result | Fmax (clock) | slowest path | nextpnr |")
    print("| ---: | --- | ---: | --- | ---: |")
    fmaxes = []
    for seed in args.seeds:
        report = build(cfg, row.board, seed=seed, placer=args.placer, quiet=True)
        fmax = report.fmax_mhz
        if fmax is not None:
            fmaxes.append(fmax)
        shown = "–" if fmax is None else f"{fmax:.1f} MHz ({report.clk_mhz:g})"
        minutes = report.seconds.get("nextpnr", 0.0) / 60
        print(f"| {seed} | {report.status} | {shown} | {report.critical_path} | {minutes:.1f} min |", flush=True)
    if fmaxes:
        print(f"\nmedian {statistics.median(fmaxes):.1f} MHz, {min(fmaxes):.1f} to {max(fmaxes):.1f} "
              f"over {len(fmaxes)} seeds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
