"""The board PLLs: which clocks they can make from a board's oscillator, and their settings.

A board build runs the accelerator at ``hardware.clock_mhz``.  When that differs from the
board's oscillator, :class:`~perturbo.boards.top.BoardTop` makes it with the FPGA's PLL, set
up by :func:`pll_settings` from the divider ranges below (computed here, in exact rational
arithmetic, rather than by a vendor tool):

- **ECP5, EHXPLLL** (feedback from CLKOP, the ``ecppll`` arrangement of Project Trellis):
  ``f_out = f_in * CLKFB_DIV / CLKI_DIV`` and ``f_vco = f_out * CLKOP_DIV``, with
  ``CLKI_DIV`` 1..128, ``CLKFB_DIV`` 1..80, ``CLKOP_DIV`` 1..128, the phase detector
  ``f_in / CLKI_DIV`` in 3.125..400 MHz, the VCO in 400..800 MHz and the output in
  10..400 MHz (``ecppll``'s limits; the datasheet allows outputs down to 3.125 MHz, which a
  training accelerator never wants).  From the ULX3S's 25 MHz: every ``25 * F / R`` MHz
  with ``R`` <= 8, for instance 40, 45, 45.833, 46.875, 50, 53.125, 54.167, 55, 56.25, 60, 75
  or 100 MHz (not 48 or 52: their ``R`` would put the phase detector below 3.125 MHz).
- **iCE40UP5K, SB_PLL40_PAD** in ``SIMPLE`` feedback (the iCEBreaker's 12 MHz oscillator
  is on pin 35, the PLL's input pad, so the pad primitive takes it directly):
  ``f_out = f_in * (DIVF + 1) / ((DIVR + 1) * 2^DIVQ)`` with ``DIVR`` 0..15, ``DIVF``
  0..127, ``DIVQ`` 1..6, the phase detector ``f_in / (DIVR + 1)`` in 10..133 MHz, the VCO
  ``f_in * (DIVF + 1) / (DIVR + 1)`` in 533..1066 MHz and the output in 16..275 MHz
  (``icepll`` of Project IceStorm).  From 12 MHz the phase detector allows only ``DIVR = 0``,
  so the outputs are ``12 * N / 2^Q`` MHz with a VCO of ``12 * N`` MHz: 16.125, 16.3125,
  16.5, then 16.875 to 33 MHz in steps of 0.375 MHz, 33.75 to 66 MHz in steps of 0.75 MHz,
  and so on.  Nothing between 12 and 16.125 MHz can be made: a design slower than that
  runs from the oscillator itself.

A clock equal to the oscillator needs no PLL (:func:`pll_settings` returns None).  A
``clock_mhz`` is taken when a PLL output is within :data:`MATCH_MHZ` of it (the value
written to three decimals, as 45.833 for 45 5/6 MHz); the build then runs at the exact
output frequency, which is what the UART divisor and nextpnr's constraint use.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from functools import cache

__all__ = ["MATCH_MHZ", "PLLError", "PLLSettings", "achievable_mhz", "nearest_mhz", "pll_settings"]

#: How close (MHz) a PLL output must be to ``hardware.clock_mhz`` to count as that clock.
MATCH_MHZ = Fraction(1, 2000)

_MHZ = 1_000_000


class PLLError(ValueError):
    """The PLL cannot make the clock asked for (the message names the nearest it can)."""


@dataclass(frozen=True)
class PLLSettings:
    """One PLL set up to make one clock.

    Attributes
    ----------
    family : str
        ``"ecp5"`` (EHXPLLL) or ``"ice40"`` (SB_PLL40_PAD).
    input_hz : Fraction
        The oscillator.
    output_hz : Fraction
        The clock the PLL makes, exactly.
    vco_hz : Fraction
        The VCO frequency.
    dividers : dict of str to int
        ECP5: ``CLKI_DIV``, ``CLKFB_DIV``, ``CLKOP_DIV``, ``CLKOP_CPHASE``; iCE40: ``DIVR``,
        ``DIVF``, ``DIVQ``, ``FILTER_RANGE`` (the primitives' parameter names).
    """

    family: str
    input_hz: Fraction
    output_hz: Fraction
    vco_hz: Fraction
    dividers: dict[str, int]

    @property
    def output_mhz(self) -> float:
        """The generated clock in MHz."""
        return float(self.output_hz / _MHZ)


def _ecp5_settings(f_in: Fraction) -> dict[Fraction, PLLSettings]:
    """Every output an EHXPLLL makes from ``f_in``, each with its preferred settings."""
    found: dict[Fraction, PLLSettings] = {}
    for clki in range(1, 129):
        pfd = f_in / clki
        if not Fraction(3125, 1000) * _MHZ <= pfd <= 400 * _MHZ:
            continue
        for clkfb in range(1, 81):
            out = pfd * clkfb
            if not 10 * _MHZ <= out <= 400 * _MHZ:
                continue
            for clkop in range(1, 129):
                vco = out * clkop
                if not 400 * _MHZ <= vco <= 800 * _MHZ:
                    continue
                # ecppll's preference: the VCO nearest 600 MHz, then the first found
                best = found.get(out)
                if best is None or abs(vco - 600 * _MHZ) < abs(best.vco_hz - 600 * _MHZ):
                    # the output's phase: ecppll shifts CLKOP by half a period, as Lattice's
                    # tools do; nothing here is timed against the oscillator, so it is moot
                    found[out] = PLLSettings("ecp5", f_in, out, vco, {
                        "CLKI_DIV": clki, "CLKFB_DIV": clkfb, "CLKOP_DIV": clkop,
                        "CLKOP_CPHASE": clkop // 2})
    return found


def _ice40_filter_range(pfd: Fraction) -> int:
    """SB_PLL40's loop filter setting for a phase-detector frequency (icepll's table)."""
    for limit, value in ((17, 1), (26, 2), (44, 3), (66, 4), (101, 5)):
        if pfd < limit * _MHZ:
            return value
    return 6


def _ice40_settings(f_in: Fraction) -> dict[Fraction, PLLSettings]:
    """Every output an SB_PLL40 in SIMPLE feedback makes from ``f_in`` (first settings found,
    in icepll's order)."""
    found: dict[Fraction, PLLSettings] = {}
    if not 10 * _MHZ <= f_in <= 133 * _MHZ:
        return found
    for divr in range(16):
        pfd = f_in / (divr + 1)
        if not 10 * _MHZ <= pfd <= 133 * _MHZ:
            continue
        for divf in range(128):
            vco = pfd * (divf + 1)
            if not 533 * _MHZ <= vco <= 1066 * _MHZ:
                continue
            for divq in range(1, 7):
                out = vco / (1 << divq)
                if 16 * _MHZ <= out <= 275 * _MHZ and out not in found:
                    found[out] = PLLSettings("ice40", f_in, out, vco, {
                        "DIVR": divr, "DIVF": divf, "DIVQ": divq,
                        "FILTER_RANGE": _ice40_filter_range(pfd)})
    return found


@cache
def _table(family: str, input_hz: Fraction) -> dict[Fraction, PLLSettings]:
    if family == "ecp5":
        return _ecp5_settings(input_hz)
    if family == "ice40":
        return _ice40_settings(input_hz)
    raise ValueError(f"family must be 'ecp5' or 'ice40', not {family!r}")


def achievable_mhz(family: str, input_mhz: float) -> list[float]:
    """Every clock (MHz, ascending) the ``family``'s PLL makes from a ``input_mhz`` oscillator."""
    return sorted(float(f / _MHZ) for f in _table(family, Fraction(input_mhz) * _MHZ))


def nearest_mhz(family: str, input_mhz: float, wanted_mhz: float) -> list[float]:
    """The clocks nearest ``wanted_mhz`` a board can run at: the closest below and above it
    (MHz) among the PLL's outputs and the oscillator itself."""
    options = sorted({*achievable_mhz(family, input_mhz), float(input_mhz)})
    below = [f for f in options if f < wanted_mhz]
    above = [f for f in options if f > wanted_mhz]
    return ([below[-1]] if below else []) + ([above[0]] if above else [])


def pll_settings(family: str, input_mhz: float, wanted_mhz: float, *, board: str = "the board") -> PLLSettings | None:
    """The PLL settings that make ``wanted_mhz`` from a ``input_mhz`` oscillator.

    Returns
    -------
    PLLSettings or None
        None when ``wanted_mhz`` is the oscillator itself (no PLL needed).

    Raises
    ------
    PLLError
        No PLL output is within :data:`MATCH_MHZ` of ``wanted_mhz``; the message names the
        nearest ones (and the oscillator, which always works).
    """
    f_in = Fraction(input_mhz) * _MHZ
    wanted = Fraction(wanted_mhz) * _MHZ
    if abs(wanted - f_in) <= MATCH_MHZ * _MHZ:
        return None
    table = _table(family, f_in)
    best = min(table, key=lambda f: abs(f - wanted), default=None)
    if best is not None and abs(best - wanted) <= MATCH_MHZ * _MHZ:
        return table[best]
    primitive = {"ecp5": "ECP5 PLL (EHXPLLL)", "ice40": "iCE40 PLL (SB_PLL40_PAD)"}[family]
    near = nearest_mhz(family, input_mhz, wanted_mhz)
    options = " or ".join(f"{f:.6g} MHz" + (" (the oscillator, no PLL)" if f == float(input_mhz) else "")
                          for f in near)
    raise PLLError(f"hardware.clock_mhz: the {primitive} of {board} cannot make {wanted_mhz:g} MHz "
                   f"from its {input_mhz:g} MHz oscillator; the nearest it can: {options} "
                   f"(docs/boards.md, 'Clock')")
