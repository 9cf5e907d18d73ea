"""What a board build used and how fast it runs: :class:`SynthReport`, and the parsers behind it.

The figures come from nextpnr's ``--report`` JSON (utilisation and Fmax per clock) when
nextpnr got that far; a build that does not fit stops in placement and writes no
report, so the utilisation is then read from the nextpnr log ("Device utilisation",
printed after packing) and the cell counts from the yosys log.  :meth:`SynthReport.table`
prints it; ``report.json`` in the build directory is :meth:`SynthReport.to_json`.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_PLACER",
    "PLACERS",
    "ClockTiming",
    "ResourceUse",
    "SynthReport",
    "REPORT_FORMAT",
    "RESOURCE_NAMES",
    "STATUS_FAILED",
    "STATUS_NO_FIT",
    "STATUS_OK",
    "STATUS_TIMING",
    "parse_critical_path",
    "parse_nextpnr_log",
    "parse_nextpnr_report",
    "parse_yosys_cells",
    "summarise_resources",
]

#: nextpnr's placers (``--placer``); the first is nextpnr's own default.
PLACERS = ("heap", "static", "sa")
#: The placer nextpnr uses when none is named.
DEFAULT_PLACER = PLACERS[0]

#: Friendly resource -> {family: (nextpnr utilisation key, label for tables)}.
RESOURCE_NAMES: dict[str, dict[str, tuple[str, str]]] = {
    "logic": {"ice40": ("ICESTORM_LC", "logic cells (LC)"), "ecp5": ("TRELLIS_COMB", "LUT4s (TRELLIS_COMB)")},
    "ff": {"ecp5": ("TRELLIS_FF", "flip-flops")},
    "dsp": {"ice40": ("ICESTORM_DSP", "DSPs (SB_MAC16)"), "ecp5": ("MULT18X18D", "multipliers (MULT18X18D)")},
    "bram": {"ice40": ("ICESTORM_RAM", "block RAMs (SB_RAM40_4K)"), "ecp5": ("DP16KD", "block RAMs (DP16KD)")},
    "spram": {"ice40": ("ICESTORM_SPRAM", "SPRAM (SB_SPRAM256KA)")},
    "lutram": {"ecp5": ("TRELLIS_RAMW", "LUT RAM (TRELLIS_RAMW)")},
    "io": {"ice40": ("SB_IO", "I/O (SB_IO)"), "ecp5": ("TRELLIS_IO", "I/O")},
}

#: Version of the ``report.json`` layout; a cached build with another one is parsed again.
REPORT_FORMAT = 2

#: Build outcomes.
STATUS_OK = "ok"
STATUS_NO_FIT = "does-not-fit"
STATUS_FAILED = "failed"
#: Placed and routed, but Fmax is below the clock the design runs at (``hardware.clock_mhz``).
STATUS_TIMING = "fails-timing"


@dataclass
class ResourceUse:
    """How much of one resource a design uses.

    Attributes
    ----------
    used : int
    available : int or None
        None where the device has no such resource or nextpnr did not say.
    """

    used: int
    available: int | None = None

    @property
    def fraction(self) -> float | None:
        """``used / available``, None without an ``available``."""
        if not self.available:
            return None
        return self.used / self.available

    @property
    def fits(self) -> bool:
        """Whether ``used <= available`` (True when the capacity is unknown)."""
        return self.available is None or self.used <= self.available


@dataclass
class ClockTiming:
    """Fmax of one clock after routing.

    Attributes
    ----------
    name : str
        The clock net (as nextpnr names it).
    achieved_mhz : float or None
        The Fmax nextpnr found; None if it did not route.
    requested_mhz : float or None
        The constraint (the board clock).
    """

    name: str
    achieved_mhz: float | None
    requested_mhz: float | None = None

    @property
    def met(self) -> bool | None:
        """Whether ``achieved >= requested`` (None if either is unknown)."""
        if self.achieved_mhz is None or self.requested_mhz is None:
            return None
        return self.achieved_mhz >= self.requested_mhz


@dataclass
class SynthReport:
    """The outcome of one board build (see :func:`perturbo.boards.build.build`).

    Attributes
    ----------
    board : str
        Board name (``icebreaker``, ``ulx3s-85f``, ``orangecrab``).
    device : str
        The FPGA and package.
    family : str
        ``ice40`` or ``ecp5``.
    config_name : str
        ``cfg.name``.
    config_hash : str
        The configuration hash (``Reg.CONFIG_HASH``), hexadecimal.
    lanes : int
        MAC lanes of the accelerator.
    status : str
        ``"ok"`` (placed, routed, bitstream written, Fmax at least the clock),
        ``"fails-timing"`` (routed, but Fmax is below :attr:`clk_mhz`; see :attr:`message`),
        ``"does-not-fit"`` (a resource overflows; see :attr:`overflow`) or ``"failed"``.
    resources : dict of str to ResourceUse
        ``logic``, ``dsp``, ``bram``, ``spram``, ``io`` (and ``ff`` on ECP5): the friendly
        view of :attr:`utilisation` (:data:`RESOURCE_NAMES`).
    utilisation : dict of str to ResourceUse
        nextpnr's utilisation by BEL type.
    cells : dict of str to int
        Cell counts after synthesis (yosys ``stat``).
    clocks : list of ClockTiming
        Fmax per clock; empty if the design did not route.
    clk_mhz : float
        The clock the design runs at: ``hardware.clock_mhz`` (made by the PLL) or the
        board's oscillator.
    baud : int
        UART rate.
    uart_divisor : int
        Clock cycles per UART bit.
    seed : int
        nextpnr placement seed.
    placer : str
        nextpnr's placer (``--placer``): ``heap``, ``static`` or ``sa``.
    timing_weight : int or None
        The heap placer's timing weight (``hardware.placement_timing_weight``); None:
        nextpnr's default.
    seconds : dict of str to float
        Wall time of ``yosys``, ``nextpnr``, ``pack`` and the ``total`` (of the build that
        produced the report, also when it is served from the cache).
    key : str
        The cache key: a hash of the build plan (RTL, constraints, scripts, options), the
        board and the tool versions.
    build_dir : str
        Where the build's files are.
    bitstream : str or None
        The bitstream file, if one was written.
    toolchain : dict of str to str
        Versions of Amaranth, amaranth-boards and the tools.
    overflow : list of str
        Resources that exceed the device (``"ICESTORM_LC 8681/5280"``).
    critical_path : str
        The slowest register-to-register path: ``"from-cell -> to-cell: N ns, K steps"``.
    message : str
        The tool's error line when the build did not succeed.
    notes : list of str
        Anything worth knowing (for instance the PLL settings that make the clock).
    format : int
        :data:`REPORT_FORMAT` of the code that wrote it.
    cached : bool
        The report came from the build cache (not stored in ``report.json``).
    """

    board: str
    device: str
    family: str
    config_name: str
    config_hash: str
    lanes: int
    status: str
    resources: dict[str, ResourceUse] = field(default_factory=dict)
    utilisation: dict[str, ResourceUse] = field(default_factory=dict)
    cells: dict[str, int] = field(default_factory=dict)
    clocks: list[ClockTiming] = field(default_factory=list)
    clk_mhz: float = 0.0
    baud: int = 0
    uart_divisor: int = 0
    seed: int = 1
    placer: str = DEFAULT_PLACER
    timing_weight: int | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    key: str = ""
    build_dir: str = ""
    bitstream: str | None = None
    toolchain: dict[str, str] = field(default_factory=dict)
    overflow: list[str] = field(default_factory=list)
    critical_path: str = ""
    message: str = ""
    notes: list[str] = field(default_factory=list)
    format: int = REPORT_FORMAT
    cached: bool = False

    # -- derived ---------------------------------------------------------------------------

    @property
    def fits(self) -> bool:
        """Placed and routed, nothing over capacity (whether or not it meets timing)."""
        return self.status in (STATUS_OK, STATUS_TIMING) and not self.overflow

    @property
    def fmax_mhz(self) -> float | None:
        """The lowest achieved Fmax over the clocks (None if none routed)."""
        achieved = [c.achieved_mhz for c in self.clocks if c.achieved_mhz is not None]
        return min(achieved) if achieved else None

    @property
    def timing_met(self) -> bool | None:
        """Every clock meets its constraint (None without timing)."""
        verdicts = [c.met for c in self.clocks if c.met is not None]
        return all(verdicts) if verdicts else None

    # -- serialisation ---------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (without ``cached``)."""
        data = asdict(self)
        data.pop("cached")
        data["fits"] = self.fits
        data["fmax_mhz"] = self.fmax_mhz
        return data

    def to_json(self) -> str:
        """:meth:`to_dict` as indented JSON."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SynthReport:
        """The inverse of :meth:`to_dict` (derived keys are ignored)."""
        known = {f.name for f in fields(cls)} - {"cached"}
        data = {k: v for k, v in data.items() if k in known}
        data.setdefault("format", 1)
        data["resources"] = {k: ResourceUse(**v) for k, v in data.get("resources", {}).items()}
        data["utilisation"] = {k: ResourceUse(**v) for k, v in data.get("utilisation", {}).items()}
        data["clocks"] = [ClockTiming(**c) for c in data.get("clocks", [])]
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> SynthReport:
        """Read a ``report.json``."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    def save(self, path: str | Path) -> None:
        """Write :meth:`to_json` to ``path``."""
        Path(path).write_text(self.to_json())

    # -- presentation ----------------------------------------------------------------------

    def table(self) -> str:
        """The report as a small text table."""
        lines = [f"{self.config_name} on {self.board} ({self.device}), {self.lanes} lanes, "
                 f"nextpnr seed {self.seed}, {self.placer} placer"
                 + ("" if self.timing_weight is None else f", timing weight {self.timing_weight}")]
        if self.status == STATUS_OK:
            verdict = "fits"
        elif self.status == STATUS_TIMING:
            verdict = "FAILS TIMING: " + self.message
        elif self.status == STATUS_NO_FIT:
            verdict = "DOES NOT FIT: " + ", ".join(self.overflow)
        else:
            verdict = "FAILED: " + (self.message or "see the logs")
        lines.append(f"  result: {verdict}")
        lines.append(f"  {'resource':<28}{'used':>8}{'of':>8}{'use':>7}")
        for name, use in self.resources.items():
            label = RESOURCE_NAMES.get(name, {}).get(self.family, (None, name))[1]
            avail = "" if use.available is None else str(use.available)
            frac = use.fraction
            pct = "" if frac is None else f"{frac:.0%}"
            flag = "  <- over" if not use.fits else ""
            lines.append(f"  {label:<28}{use.used:>8}{avail:>8}{pct:>7}{flag}")
        if self.family == "ice40":
            ffs = sum(n for cell, n in self.cells.items() if cell.startswith("SB_DFF"))
            luts = self.cells.get("SB_LUT4", 0)
            carries = self.cells.get("SB_CARRY", 0)
            if luts:
                lines.append(f"  (synthesis: {luts} LUT4, {ffs} flip-flops, {carries} carries)")
        if self.clocks:
            lines.append(f"  {'clock':<36}{'Fmax':>10}{'wanted':>10}")
            for clk in self.clocks:
                got = "-" if clk.achieved_mhz is None else f"{clk.achieved_mhz:.1f}"
                want = "-" if clk.requested_mhz is None else f"{clk.requested_mhz:.1f}"
                ok = {True: "  met", False: "  MISSED", None: ""}[clk.met]
                lines.append(f"  {clk.name:<36}{got:>10}{want:>10}{ok}")
        if self.critical_path:
            lines.append(f"  critical path: {self.critical_path}")
        lines.append(f"  UART {self.baud} baud from {self.clk_mhz:g} MHz (divisor {self.uart_divisor})")
        times = ", ".join(f"{k} {v:.0f} s" for k, v in self.seconds.items())
        lines.append(f"  time: {times}" + (" (cached build)" if self.cached else ""))
        for note in self.notes:
            lines.append(f"  note: {note}")
        lines.append(f"  build: {self.build_dir}")
        if self.bitstream:
            lines.append(f"  bitstream: {self.bitstream}")
        return "\n".join(lines)


# -- parsers ----------------------------------------------------------------------------------

_UTIL_LINE = re.compile(r"^Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+\d+%", re.M)
_FMAX_LINE = re.compile(
    r"^Info: Max frequency for clock\s+'([^']+)':\s+([\d.]+) MHz \((?:PASS|FAIL) at ([\d.]+) MHz\)", re.M
)
_ERROR_LINE = re.compile(r"^ERROR: (.*)$", re.M)


def parse_nextpnr_report(path: str | Path) -> tuple[dict[str, ResourceUse], list[ClockTiming]]:
    """Utilisation and Fmax from nextpnr's ``--report`` JSON.

    Returns
    -------
    utilisation : dict of str to ResourceUse
        By BEL type.
    clocks : list of ClockTiming
    """
    data = json.loads(Path(path).read_text())
    util = {name: ResourceUse(int(v["used"]), int(v["available"]))
            for name, v in data.get("utilization", {}).items()}
    clocks = [ClockTiming(name, float(v["achieved"]), float(v["constraint"]))
              for name, v in data.get("fmax", {}).items()]
    return util, clocks


def parse_critical_path(path: str | Path) -> str:
    """The slowest clock-to-clock path in nextpnr's ``--report`` JSON, as one line."""
    data = json.loads(Path(path).read_text())
    worst: tuple[float, str] = (0.0, "")
    for crit in data.get("critical_paths", []):
        if "<async>" in (crit.get("from"), crit.get("to")):
            continue
        steps = crit.get("path", [])
        if not steps:
            continue
        delay = sum(float(step.get("delay", 0.0)) for step in steps)
        if delay > worst[0]:
            start = steps[0].get("from", {}).get("cell", "?")
            end = steps[-1].get("to", {}).get("cell", "?")
            worst = (delay, f"{start} -> {end}: {delay:.1f} ns, {len(steps)} steps")
    return worst[1]


def parse_nextpnr_log(text: str) -> tuple[dict[str, ResourceUse], list[ClockTiming], str]:
    """Utilisation, Fmax and the first error from a nextpnr log.

    The utilisation is the last "Device utilisation" block; the Fmax the last line per
    clock (after routing, when there is one).

    Returns
    -------
    utilisation : dict of str to ResourceUse
    clocks : list of ClockTiming
    error : str
        The first ``ERROR:`` line, or "".
    """
    util: dict[str, ResourceUse] = {}
    start = text.rfind("Device utilisation")
    if start >= 0:
        block = text[start:]
        for name, used, avail in _UTIL_LINE.findall(block):
            if name in util:  # only the first block after ``start``
                break
            util[name] = ResourceUse(int(used), int(avail))
    clocks: dict[str, ClockTiming] = {}
    for name, achieved, wanted in _FMAX_LINE.findall(text):
        clocks[name] = ClockTiming(name, float(achieved), float(wanted))
    error = _ERROR_LINE.search(text)
    return util, list(clocks.values()), error.group(1).strip() if error else ""


_CELL_LINE = re.compile(r"^\s+(\d+)\s+([A-Z][A-Z0-9_]*)\s*$", re.M)


def parse_yosys_cells(text: str) -> dict[str, int]:
    """Cell counts of the top module from the last ``stat`` in a yosys log."""
    start = text.rfind("Printing statistics")
    if start < 0:
        return {}
    section = text[start:]
    end = section.find("=== design hierarchy ===")
    if end >= 0:
        section = section[:end]
    cells: dict[str, int] = {}
    for count, cell in _CELL_LINE.findall(section):
        cells.setdefault(cell, int(count))
    return cells


def summarise_resources(family: str, utilisation: dict[str, ResourceUse],
                        cells: dict[str, int]) -> dict[str, ResourceUse]:
    """The friendly view (:data:`RESOURCE_NAMES`) of nextpnr's utilisation.

    Without a nextpnr utilisation (synthesis failed) the counts come from the yosys cells.
    """
    out: dict[str, ResourceUse] = {}
    yosys_names = {
        "ice40": {"dsp": "SB_MAC16", "bram": "SB_RAM40_4K", "spram": "SB_SPRAM256KA"},
        "ecp5": {"dsp": "MULT18X18D", "bram": "DP16KD", "logic": "LUT4"},
    }.get(family, {})
    for name, families in RESOURCE_NAMES.items():
        if family not in families:
            continue
        key = families[family][0]
        if key in utilisation:
            out[name] = utilisation[key]
        elif not utilisation and name in yosys_names:
            out[name] = ResourceUse(cells.get(yosys_names[name], 0), None)
    return out


def overflowing(utilisation: dict[str, ResourceUse]) -> list[str]:
    """``"NAME used/available"`` for every BEL type over capacity."""
    return [f"{name} {use.used}/{use.available}" for name, use in utilisation.items() if not use.fits]
