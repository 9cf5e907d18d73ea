"""How far placement alone moves a build's Fmax: one board-table row built with several
nextpnr seeds (and heap-placer timing weights), each build's Fmax and slowest path, and
the median for each weight.

One build's Fmax is one draw: builds of the same netlist with different placement seeds
have differed by up to 25 MHz on the ULX3S-85F (docs/boards.md, sessions 21 and 26), more
than most single-path RTL changes gain.  Judge an RTL change by the medians of this
script on each side, not by one seed.

Usage::

    python bench/fmax_seeds.py "8 lanes (the example)" --seeds 1 2 3
    python bench/fmax_seeds.py "16 lanes" --seeds 1 2 3 --placer static
    python bench/fmax_seeds.py "16 lanes" --timing-weights default 20 30

The row is a label of ``bench/board_table.py`` (its rows: the ULX3S at 8 to 64 lanes, the
iCEBreaker, the 8-lane inference-only build).  Every build is cached
(:func:`perturbo.boards.build`), so seed 1 with the board's placer is the table's own
build, and a second run only reads the reports.  A weight that lifts one row's median may
lower another's (the example gained 6 % with 30, 16 lanes lost 2 %: docs/boards.md, session
34), so a configuration names its own (``hardware.placement_timing_weight``).
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


def _weight(text: str) -> int | None:
    """A ``--timing-weights`` value: a positive integer, or ``default`` for nextpnr's own."""
    if text == "default":
        return None
    try:
        weight = int(text)
    except ValueError:
        weight = 0
    if weight < 1:
        raise argparse.ArgumentTypeError(f"a timing weight is a positive integer or 'default', not {text!r}")
    return weight


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    table_rows = {row.label: row for row in rows([8, 16, 32, 64], None)}
    parser.add_argument("row", choices=list(table_rows), help="a row of bench/board_table.py")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="nextpnr seeds (default 1 2 3)")
    parser.add_argument("--placer", choices=PLACERS, default=None,
                        help="nextpnr's placer (default the board's for the lane count)")
    parser.add_argument("--timing-weights", type=_weight, nargs="+", default=None, metavar="W",
                        help="the heap placer's timing weights to compare, each with every seed ('default': "
                             "nextpnr's; default the row's hardware.placement_timing_weight)")
    args = parser.parse_args(argv)
    row = table_rows[args.row]
    weights = [row.cfg.hardware.placement_timing_weight] if args.timing_weights is None else args.timing_weights
    print(f"{row.board}, {row.label}, placer {args.placer or 'the board default'}\n")
    print("| timing weight | seed | result | Fmax (clock) | slowest path | nextpnr |")
    print("| ---: | ---: | --- | ---: | --- | ---: |")
    medians = []
    for weight in weights:
        cfg = variant(row.cfg, placement_timing_weight=weight)
        fmaxes = []
        for seed in args.seeds:
            report = build(cfg, row.board, seed=seed, placer=args.placer, quiet=True)
            fmax = report.fmax_mhz
            if fmax is not None:
                fmaxes.append(fmax)
            shown = "–" if fmax is None else f"{fmax:.1f} MHz ({report.clk_mhz:g})"
            minutes = report.seconds.get("nextpnr", 0.0) / 60
            print(f"| {weight or 'default'} | {seed} | {report.status} | {shown} | {report.critical_path} "
                  f"| {minutes:.1f} min |", flush=True)
        if fmaxes:
            medians.append(f"timing weight {weight or 'default'}: median {statistics.median(fmaxes):.1f} MHz, "
                           f"{min(fmaxes):.1f} to {max(fmaxes):.1f} over {len(fmaxes)} seeds")
    print("", *medians, sep="\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
