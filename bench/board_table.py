"""The board table: the digits accelerator on the ULX3S-85F at 8 to 64 lanes and on the
iCEBreaker, and what learning costs (the same network built inference-only).

Builds (through :func:`perturbo.boards.build`, so every build is cached and a second run
only reads the reports) and prints one Markdown table:

- the ULX3S-85F at each of ``--lanes`` (default 8, 16, 32, 64) MAC lanes, the digits MGD
  weight-perturbation network (``examples/digits-mgd-weight.yaml``: as shipped at its 8
  lanes and 100 MHz, the other lane counts at :data:`VARIANT_CLOCK_MHZ` with the
  example's other hardware keys, ``register_grads`` among them), from ``--narrow-update-from``
  lanes with an update unit half as wide as the lanes (:data:`NARROW_UPDATE_FROM`);
- the iCEBreaker at ``--icebreaker-lanes`` (default: the lane count of
  ``examples/digits-mgd-weight-icebreaker.yaml``, 1, the largest that fits the UP5K,
  docs/boards.md);
- the ULX3S-85F at 8 lanes inference-only (``hardware.training: false``), and the cost of
  learning: the training build's resources over the inference build's, in percent (as
  SPOON and ReckOn report it).

Each row: LUT4 (the iCE40's logic cells, with its LUT4 count from synthesis), flip-flops,
DSPs, block RAM, SPRAM, Fmax against the clock the build runs at, the critical path, and
the cycles per training step as the host driver trains (a step of a run of several where
the build streams, else a one-step ``TRAIN``: :attr:`perturbo.estimate.Estimate.trained_cycles_per_step`,
from the cycle model, which equals the accelerator's counters), the samples per second
they give at Fmax, and the lane multiply-accumulates per second as a share of the device's
peak (:data:`PEAK_MACS`).

Usage::

    python bench/board_table.py                     # build what is missing (hours), print
    python bench/board_table.py --cached-only       # print what the cache holds, "not run" else
    python bench/board_table.py --lanes 8 16 --out table.md

ULX3S builds take 3 to 13 minutes each on a loaded 2-core machine up to 16 lanes, about an
hour at 32.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from perturbo.boards import SynthReport, build
from perturbo.boards.build import find_cached
from perturbo.boards.report import DEFAULT_PLACER
from perturbo.config import Config, load_config, parse_config
from perturbo.estimate import estimate

REPO = Path(__file__).resolve().parent.parent
DIGITS = REPO / "examples" / "digits-mgd-weight.yaml"
ICEBREAKER = REPO / "examples" / "digits-mgd-weight-icebreaker.yaml"


def variant(cfg: Config, **hardware: object) -> Config:
    """``cfg`` with ``hardware`` keys replaced (validated like a file)."""
    return parse_config({**cfg.model_dump(mode="json"),
                         "hardware": {**cfg.hardware.model_dump(mode="json"), **hardware}})


#: Peak INT8 multiply-accumulates per second of each board's FPGA (../shared/TOOLCHAIN.md: its
#: multipliers at the Fmax a bare MAC array reaches there): iCE40UP5K 8 DSP x 49 MHz, ECP5-85F
#: 156 multipliers x 110 MHz, ECP5-25F 28 x 110 MHz.
PEAK_MACS = {"icebreaker": 8 * 49e6, "ulx3s-85f": 156 * 110e6, "orangecrab": 28 * 110e6}


@dataclass
class Row:
    """One build of the table."""

    board: str
    label: str
    cfg: Config
    report: SynthReport | None = None


#: ULX3S-85F lane counts from which the update unit is half as wide as the lanes, a weight
#: row in two cycles (``hardware.update_lanes``; ``rows + 1`` cycles a step more: 83 at 32
#: lanes, 43 at 64). At 32 lanes (session 31, static placer) it gave 95.9 and 92.3 MHz at
#: seeds 1 and 2, 24 547 LUT4, where the full-width update's seed 1 did not route and its
#: seed 2 gave 88.1 MHz, 26 567 LUT4: more samples a second at either seed. At 64 lanes the
#: lanes' products (one multiplier a lane) and a full-width update's (two a lane, 32-bit G)
#: need 193 of the ECP5-85F's 156 multipliers, with the update 32 wide 129, and 45 951 LUT4
#: after placement against 66 022 with the full-width update's top product slices in logic
#: (``hardware.update_products: dsp-low``, the 64-lane row until session 30; at session 29's
#: RTL, with the update's sweep, which session 30 took out).
NARROW_UPDATE_FROM = 32


#: The clock of the ULX3S-85F rows at other lane counts than the example's: issue 12's goal,
#: since nextpnr's timing-driven placement and routing aim at the clock they are given (built
#: against 50 MHz until session 16, they stopped improving once they met it).  A row whose
#: Fmax falls short says so ("FAILS TIMING") and gives its figures at that Fmax.
VARIANT_CLOCK_MHZ = 100.0


#: The placement of the rows at other lane counts than the shipped examples' (which name
#: theirs, ``hardware.placement_seed`` and ``placement_timing_weight``, and the
#: inference-only row takes the example's): nextpnr's default seed and timing weight.
VARIANT_PLACEMENT = {"placement_seed": 1, "placement_timing_weight": None}


def ulx3s_row(digits: Config, lanes: int, narrow_from: int) -> Row:
    """The digits example on the ULX3S-85F at ``lanes`` lanes (as shipped at its own)."""
    if lanes == digits.hardware.lanes:
        return Row("ulx3s-85f", f"{lanes} lanes (the example)", digits)
    at = {"lanes": lanes, "clock_mhz": VARIANT_CLOCK_MHZ, **VARIANT_PLACEMENT}
    if lanes >= narrow_from:
        return Row("ulx3s-85f", f"{lanes} lanes, update {lanes // 2} wide",
                   variant(digits, **at, update_lanes=lanes // 2))
    return Row("ulx3s-85f", f"{lanes} lanes", variant(digits, **at))


def rows(lanes: list[int], icebreaker_lanes: int | None, narrow_from: int = NARROW_UPDATE_FROM) -> list[Row]:
    """The builds of the table, in order."""
    digits = load_config(DIGITS)
    out = [ulx3s_row(digits, n, narrow_from) for n in lanes]
    ice = load_config(ICEBREAKER)
    out.append(Row("icebreaker", f"{icebreaker_lanes or ice.hardware.lanes} lane(s)",
                   ice if icebreaker_lanes is None else variant(ice, lanes=icebreaker_lanes)))
    out.append(Row("ulx3s-85f", "8 lanes, inference only",
                   variant(digits, lanes=8, training=False)))
    return out


def _ff(report: SynthReport) -> int | None:
    if "ff" in report.resources:
        return report.resources["ff"].used
    ffs = sum(n for cell, n in report.cells.items() if cell.startswith("SB_DFF"))
    return ffs or None


def _used(report: SynthReport, name: str) -> str:
    use = report.resources.get(name)
    if use is None:
        return "–"
    return f"{use.used}/{use.available}" if use.available else str(use.used)


def _logic(report: SynthReport) -> str:
    use = report.resources.get("logic")
    if use is None:
        return "–"
    def spaced(n: int) -> str:
        return f"{n:,}".replace(",", " ")

    text = f"{spaced(use.used)} ({use.fraction:.0%})" if use.fraction is not None else spaced(use.used)
    if report.family == "ice40":
        luts = report.cells.get("SB_LUT4")
        text = f"{text} LC" + (f", {spaced(luts)} LUT4" if luts else "")
    return text


def learning_pair(table: list[Row]) -> tuple[Row | None, Row | None]:
    """The 8-lane ULX3S-85F training and inference-only rows of ``table``."""
    ulx3s_8 = [row for row in table if row.board == "ulx3s-85f" and row.cfg.hardware.lanes == 8]
    return (next((row for row in ulx3s_8 if row.cfg.hardware.training), None),
            next((row for row in ulx3s_8 if not row.cfg.hardware.training), None))


def markdown(table: list[Row], medians: tuple[float | None, float | None] = (None, None)) -> str:
    """The table, and the learning overhead of the 8-lane ULX3S build (``medians``: its
    training and inference-only builds' median Fmax over :data:`MEDIAN_SEEDS`)."""
    head = ("| board | build | result | LUT4 | FF | DSP | block RAM | SPRAM | Fmax (clock) | critical path "
            "| cycles/step | samples/s at Fmax | lane-MAC/s at Fmax (of the device's peak) |")
    lines = [head, "| " + " | ".join(["---"] * 13) + " |"]
    for row in table:
        r = row.report
        if r is None:
            lines.append(f"| {row.board} | {row.label} | not run | | | | | | | | | | |")
            continue
        fmax = r.fmax_mhz
        est = estimate(row.cfg, fmax) if row.cfg.hardware.training and fmax else None
        cycles = est.trained_cycles_per_step if est else None
        samples = f"{est.samples_per_second:,.0f}".replace(",", " ") if est else "n/a"
        macs = (f"{est.macs_per_second / 1e9:.2f} G ({est.macs_per_second / PEAK_MACS[row.board]:.1%})"
                if est else "n/a")
        result = {"ok": "fits, meets clock", "fails-timing": "FAILS TIMING",
                  "does-not-fit": "does not fit", "failed": "failed"}.get(r.status, r.status)
        ff = _ff(r)
        if r.placer != DEFAULT_PLACER:
            result = f"{result} ({r.placer} placer)"
        clock = f"{fmax:.1f} MHz ({r.clk_mhz:g})" if fmax else f"– ({r.clk_mhz:g})"
        lines.append(
            f"| {row.board} | {row.label} | {result} | {_logic(r)} | {ff if ff is not None else '–'} "
            f"| {_used(r, 'dsp')} | {_used(r, 'bram')} | {_used(r, 'spram')} | {clock} "
            f"| {r.critical_path or '–'} | {cycles if cycles else 'n/a'} | {samples} | {macs} |")
    lines.append("")
    train, infer = learning_pair(table)
    lines.append(overhead(train and train.report, infer and infer.report, medians))
    return "\n".join(lines) + "\n"


#: The placement seeds whose median Fmax the cost of learning gives beside the table's own
#: builds: one build's Fmax is one draw of placement (bench/fmax_seeds.py).  The
#: inference-only row is placed as the example is (its seed and timing weight; until session
#: 34 at :data:`VARIANT_PLACEMENT`'s seed against the example's own).
MEDIAN_SEEDS = (1, 2, 3)


def seed_median(row: Row) -> float | None:
    """The median Fmax of ``row``'s builds at :data:`MEDIAN_SEEDS`, or None unless all are cached."""
    reports = [find_cached(row.cfg, row.board, seed=seed) for seed in MEDIAN_SEEDS]
    if any(r is None or not r.fmax_mhz for r in reports):
        return None
    return statistics.median(r.fmax_mhz for r in reports)


def overhead(train: SynthReport | None, infer: SynthReport | None,
             medians: tuple[float | None, float | None] = (None, None)) -> str:
    """The cost of learning on the ULX3S-85F at 8 lanes: training over inference-only.

    ``medians`` are the training and inference-only builds' median Fmax over
    :data:`MEDIAN_SEEDS`, given as a line of their own when both are known.
    """
    if train is None or infer is None or not train.fits or not infer.fits:
        return "Cost of learning (8 lanes, ULX3S-85F): not run."
    lines = ["Cost of learning (ULX3S-85F, 8 lanes): the training build against the same network "
             "inference-only.", "",
             "| | inference only | training | overhead |", "| --- | ---: | ---: | ---: |"]
    pairs = [("LUT4", infer.resources["logic"].used, train.resources["logic"].used),
             ("FF", _ff(infer), _ff(train)),
             ("DSP", infer.resources["dsp"].used, train.resources["dsp"].used),
             ("block RAM", infer.resources["bram"].used, train.resources["bram"].used)]
    for name, a, b in pairs:
        pct = f"+{(b - a) / a:.0%}" if a else "–"
        lines.append(f"| {name} | {a} | {b} | {pct} |")
    fa, fb = infer.fmax_mhz, train.fmax_mhz
    if fa and fb:
        lines.append(f"| Fmax (MHz) | {fa:.1f} | {fb:.1f} | {(fb - fa) / fa:+.0%} |")
    mb, ma = medians
    if ma and mb:
        seeds = ", ".join(map(str, MEDIAN_SEEDS))
        lines.append(f"| Fmax, median of seeds {seeds} (MHz) | {ma:.1f} | {mb:.1f} | {(mb - ma) / ma:+.0%} |")
    return "\n".join(lines)


def emit(text: str, out: Path | None) -> None:
    """Print a bench's Markdown ``text``, and write it to ``out`` too when given."""
    print(text, end="")
    if out is not None:
        out.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lanes", type=int, nargs="+", default=[8, 16, 32, 64],
                        help="ULX3S-85F lane counts (default 8 16 32 64)")
    parser.add_argument("--icebreaker-lanes", type=int, default=None,
                        help="iCEBreaker lanes (default: the example's)")
    parser.add_argument("--narrow-update-from", type=int, default=NARROW_UPDATE_FROM, metavar="LANES",
                        help="ULX3S-85F builds of this many lanes or more have an update unit half as "
                        "wide as the lanes, a weight row in two cycles "
                        f"(hardware.update_lanes; default {NARROW_UPDATE_FROM})")
    parser.add_argument("--cached-only", action="store_true",
                        help="build nothing: rows whose build is not cached say 'not run'")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    table = rows(args.lanes, args.icebreaker_lanes, args.narrow_update_from)
    for row in table:
        if args.cached_only:
            row.report = find_cached(row.cfg, row.board)
        else:
            print(f"{row.board}, {row.label}:", file=sys.stderr, flush=True)
            row.report = build(row.cfg, row.board, quiet=True)
    train, infer = learning_pair(table)
    medians = (seed_median(train), seed_median(infer)) if train and infer else (None, None)
    emit(markdown(table, medians), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
