"""UART bytes per training step, and how the serial line bounds training against the accelerator.

    python bench/uart_rate.py [CONFIG ...] [--bursts 2]

For each CONFIG (default: every shipped digits example of an integer rule, the
iCEBreaker variants included) this trains ``--bursts`` full sample buffers of steps on
the Verilator co-simulation through the host driver, exactly as ``perturbo train`` does
on a board, and counts the bytes the driver writes and reads (``LinkStats.sent`` and
``received``: the frames, stuffing included).  The bytes are the same over TCP and over a
UART (one protocol; ``tests/test_serial_pty.py`` runs it over the simulated UART pins),
so the quicker TCP co-simulation counts them.

How often the driver polls while a step runs depends on the link's latency, not on the
protocol: the figure reported takes off the extra polls the co-simulation made.  With one
``TRAIN`` per step (``refill="step"``, the builds without the loss record) a step needs
one ``STATUS`` read; with ``TRAIN_STREAM`` (``refill="stream"``) one ``STEP`` read per grant
of samples (:attr:`~perturbo.host.accelerator.AcceleratorBackend.grants`) and one final
``STATUS`` read.

From the bytes per step (10 bit times per byte, 8N1) it prints the steps per second
the UART alone allows at 115 200 and 3 000 000 baud, beside the accelerator's own
steps per second at its board's Fmax (cycles per step from the accelerator's counters
in the same run; Fmax of the newest cached ``perturbo synth`` report of the
configuration, else the README's board figures), their ratio, and the rate of both
together: in series for ``refill="step"`` (the driver sends a step's command only after
the previous one finished, so line time and compute time add), the slower of the two for
``refill="stream"`` (the line refills the ring while the accelerator trains).  One
Markdown table.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from perturbo.config import Rule, load_config
from perturbo.data import SampleStream, load_dataset
from perturbo.hdl.bus import Reg, Space
from perturbo.sim.backend import VerilatorBackend

sys.path.insert(0, str(Path(__file__).parent))
from cosim_speed import board_fmax  # noqa: E402  (a sibling script, not a package)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
BAUDS = (115_200, 3_000_000)
BITS_PER_BYTE = 10  # start, 8 data, stop

#: Board and Fmax (MHz) of each example where no cached board report exists: the README's
#: "Every rule on the ULX3S-85F" table (commit 09c0560) and its iCEBreaker rows.
README_FMAX: dict[str, tuple[str, float]] = {
    "digits-mgd-weight": ("ulx3s-85f", 53.5),
    "digits-mgd-node": ("ulx3s-85f", 54.0),
    "digits-alr": ("ulx3s-85f", 51.1),
    "digits-hybrid-alr-mgd": ("ulx3s-85f", 52.7),
    "digits-drtp": ("ulx3s-85f", 53.0),
    "digits-tpsgd-l1": ("ulx3s-85f", 52.6),
    "digits-tpsgd-l2": ("ulx3s-85f", 49.8),
    "digits-mgd-weight-icebreaker": ("icebreaker", 16.2),
    "digits-drtp-icebreaker": ("icebreaker", 15.9),
}


def default_configs() -> list[Path]:
    """The shipped digits examples of integer rules."""
    return [path for path in sorted(EXAMPLES.glob("digits-*.yaml"))
            if Rule.BP not in load_config(path).layer_rules()]


@dataclass(frozen=True)
class Rate:
    """One configuration's measurement."""

    name: str
    board: str
    fmax_mhz: float
    samples: int
    steps: int
    sent: float  # bytes per step, host to device
    received: float  # bytes per step, device to host
    cycles: float  # accelerator cycles per step
    refill: str  # how the driver fed it

    @property
    def bytes(self) -> float:
        return self.sent + self.received

    def uart_steps(self, baud: int) -> float:
        """Steps/s the line allows."""
        return baud / BITS_PER_BYTE / self.bytes

    @property
    def accel_steps(self) -> float:
        """Steps/s of the accelerator at Fmax, its samples in place."""
        return self.fmax_mhz * 1e6 / self.cycles

    def serial_steps(self, baud: int) -> float:
        """Steps/s with the line time and the compute time in series, or overlapped (``stream``)."""
        if self.refill == "stream":
            return min(self.uart_steps(baud), self.accel_steps)
        return 1.0 / (1.0 / self.uart_steps(baud) + 1.0 / self.accel_steps)


def measure(path: Path, bursts: int) -> Rate:
    cfg = load_config(path)
    board, fmax = board_fmax(cfg) or README_FMAX[path.stem]
    splits = load_dataset(cfg)
    n = cfg.rule.samples_per_step
    t0 = time.perf_counter()
    hw = VerilatorBackend(cfg)
    print(f"{path.stem}: model built/started in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    try:
        link = hw.link
        # one STATUS read, request and reply: what each extra poll cost
        before = (link.stats.sent, link.stats.received)
        link.read_word(Space.REGS, Reg.STATUS)
        poll_out, poll_in = link.stats.sent - before[0], link.stats.received - before[1]
        steps = bursts * max(1, hw.buffer_steps)
        x, y = SampleStream(splits.train.x, splits.train.y, cfg.seed).take(steps * n)
        hw.clear_counters()
        sent0, received0, polls0, grants0 = link.stats.sent, link.stats.received, hw.status_polls, hw.grants
        hw.train_steps(x, y, steps)
        sent, received = link.stats.sent - sent0, link.stats.received - received0
        # every TRAIN command reads STATUS at least once; a streamed run STEP once per grant
        # (and STATUS once at its end)
        needed = hw.grants - grants0 + 1 if hw.refill == "stream" else steps
        extra_polls = hw.status_polls - polls0 - needed
        counters = hw.counters()
        assert counters.steps == steps, (counters.steps, steps)
    finally:
        hw.close()
    return Rate(path.stem, board, fmax, n, steps,
                (sent - extra_polls * poll_out) / steps,
                (received - extra_polls * poll_in) / steps,
                counters.cycles / steps, hw.refill)


def _n(value: float, digits: int = 0) -> str:
    """``value`` with a space between thousands, as the README writes numbers."""
    return f"{value:,.{digits}f}".replace(",", " ")


def table(rates: list[Rate]) -> str:
    rows = [
        "| example | samples/step | UART bytes/step (out + in) | cycles/step | board, Fmax "
        "| accelerator steps/s at Fmax "
        "| UART-bound steps/s at 115 200 / 3 M baud | accelerator ÷ UART at 115 200 / 3 M "
        "| both together at 115 200 / 3 M |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    lo, hi = BAUDS
    for r in rates:
        rows.append(
            f"| {r.name} ({r.refill}) | {r.samples} | {_n(r.bytes)} ({_n(r.sent)} + {_n(r.received)}) | {_n(r.cycles)} "
            f"| {r.board}, {r.fmax_mhz:g} MHz | {_n(r.accel_steps)} "
            f"| {_n(r.uart_steps(lo), 1)} / {_n(r.uart_steps(hi))} "
            f"| {_n(r.accel_steps / r.uart_steps(lo))}× / {_n(r.accel_steps / r.uart_steps(hi), 1)}× "
            f"| {_n(r.serial_steps(lo), 1)} / {_n(r.serial_steps(hi))} |"
        )
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("configs", nargs="*", type=Path, metavar="CONFIG")
    p.add_argument("--bursts", type=int, default=2, help="full sample buffers of steps to train (default 2)")
    args = p.parse_args()
    torch.set_num_threads(1)
    rates = [measure(path, args.bursts) for path in (args.configs or default_configs())]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    print(f"\nUART bytes per training step and the rates they bound (commit {commit or 'unknown'}; "
          f"{BITS_PER_BYTE} bits per byte)\n")
    print(table(rates))


if __name__ == "__main__":
    main()
