"""Verilator co-simulation: a verilated top free-running behind a TCP socket.

:class:`VerilatorSim` builds ``sim/harness.cpp`` around a top's Verilog (once per
Verilog and harness source: the binary is cached), starts it, and tells the host where
to connect; the host driver then talks to the simulation exactly as to a board::

    with VerilatorSim.from_component(top, "accel_top") as sim:
        with Link(sim.url) as link:          # "socket://127.0.0.1:<port>"
            link.write_words(Space.WEIGHTS, 0, weights)

With ``pty=True`` the harness serves a pseudo-terminal instead of a socket, and
:attr:`VerilatorSim.url` is its device (``/dev/pts/<n>``), which a host opens as it
would a board's serial port (``Link("/dev/pts/5")``, ``perturbo train ... --backend
serial --port /dev/pts/5``); the simulation then runs until :meth:`VerilatorSim.stop`,
and hosts may open and close the terminal in turn.

The top must expose the host byte streams as ``rx`` (``In(stream.Signature(8))``) and
``tx`` (``Out(stream.Signature(8))``), so that its Verilog ports are ``rx__valid``,
``rx__ready``, ``rx__payload``, ``tx__valid``, ``tx__ready`` and ``tx__payload``, and a
``sync`` domain (``clk``, ``rst``).

Builds go to ``cosim/`` in perturbo's build cache (:mod:`perturbo.cache`).
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from perturbo.backend import BackendFailure
from perturbo.cache import cache_root, cached_dir, digest
from perturbo.hdl.memories import COLLISION_MESSAGE

from .toolchain import check_fst_headers, verilator_env

__all__ = ["CosimError", "RunStats", "VerilatorSim", "build_harness"]

HARNESS_SOURCE = Path(__file__).resolve().parent / "harness.cpp"

# Amaranth's Verilog trips these warnings, fatal by default (as in tests/cocotb_build.py).
VERILATOR_WAIVERS = ["-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-Wno-CASEINCOMPLETE", "-Wno-fatal"]
# A C++ compile job per core (the tests build one model at a time, and a cold CI run
# spends much of its time compiling the co-simulation models, as cocotb's runner does
# with make -j); -O3 for Verilator and for the C++ compiler (OPT_FAST is the model's hot
# code and the harness, OPT_GLOBAL the Verilator runtime).
BUILD_FLAGS = ["--cc", "--exe", "--build", "-O3", "--build-jobs", str(os.cpu_count() or 1),
               "-MAKEFLAGS", "OPT_FAST=-O3", "-MAKEFLAGS", "OPT_GLOBAL=-O3",
               "--prefix", "Vtop", *VERILATOR_WAIVERS]
#: Added for a traced harness (``--trace``): FST output, structs kept whole.  A traced model
#: is a separate build (these flags are part of the cache key), so untraced runs keep the
#: model without trace hooks.
TRACE_FLAGS = ["--trace-fst", "--trace-structs"]


class CosimError(BackendFailure):
    """The harness could not be built or started, or it died."""


@dataclass(frozen=True)
class RunStats:
    """What the harness reports when it exits.

    Attributes
    ----------
    cycles : int
        Clock cycles simulated.
    seconds : float
        Wall time they took.
    rx, tx : int
        Bytes the model took from the host and sent to it.
    """

    cycles: int
    seconds: float
    rx: int = 0
    tx: int = 0

    @property
    def rate(self) -> float:
        """Cycles per second."""
        return self.cycles / self.seconds if self.seconds > 0 else 0.0

    @classmethod
    def parse(cls, text: str, tag: str = "STATS") -> RunStats | None:
        """The last ``TAG cycles=... seconds=...`` line in ``text``, if any."""
        found = re.findall(rf"^{tag} cycles=(\d+) seconds=([\d.]+) rate=\d+ rx=(\d+) tx=(\d+)",
                           text, re.M)
        if not found:
            return None
        cycles, seconds, rx, tx = found[-1]
        return cls(int(cycles), float(seconds), int(rx), int(tx))


def _trace_windows(text: str) -> list[tuple[int, int | None]]:
    """``(on, off)`` cycles of the harness's ``TRACE on|off cycle=N`` lines (``off`` None: still on at exit)."""
    windows: list[tuple[int, int | None]] = []
    for state, cycle in re.findall(r"^TRACE (on|off) cycle=(\d+)", text, re.M):
        if state == "on":
            windows.append((int(cycle), None))
        elif windows and windows[-1][1] is None:
            windows[-1] = (windows[-1][0], int(cycle))
    return windows


def _flags(trace: bool) -> list[str]:
    return [*BUILD_FLAGS, *TRACE_FLAGS] if trace else BUILD_FLAGS


def _build_key(verilog: str, top: str, trace: bool = False) -> str:
    return digest(verilog, top, HARNESS_SOURCE.read_text(), repr(_flags(trace)))


def build_harness(verilog: str, top: str, *, cache_dir: Path | None = None,
                  timeout: float = 900.0, trace: bool = False) -> Path:
    """Build (or find in the cache) the harness binary for ``top``.

    Parameters
    ----------
    verilog : str
        The top's Verilog text.
    top : str
        Its module name.
    cache_dir : Path, optional
        Overrides :func:`perturbo.cache.cache_root`.
    timeout : float
        Seconds the build may take.
    trace : bool
        Build the traced harness (:data:`TRACE_FLAGS`; its ``--trace FILE`` option works).

    Returns
    -------
    Path
        The executable.

    Raises
    ------
    CosimError
        The build failed; the message ends with Verilator's output.
    """
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    variant = "-trace" if trace else ""
    dest = root / "cosim" / f"{top}{variant}-{_build_key(verilog, top, trace)}"

    def build(work: Path) -> None:
        if trace:
            check_fst_headers()
        (work / f"{top}.v").write_text(verilog)
        shutil.copy(HARNESS_SOURCE, work / "harness.cpp")
        command = ["verilator", *_flags(trace), "--top-module", top, "-Mdir", "obj",
                   "-o", "../harness", f"{top}.v", "harness.cpp"]
        env = {**os.environ, **verilator_env()}
        result = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True,
                                timeout=timeout)
        if result.returncode != 0 or not (work / "harness").exists():
            log = (result.stdout + result.stderr)[-4000:]
            raise CosimError(f"Verilator failed to build the harness for {top!r} "
                             f"(exit {result.returncode}):\n{log}")
        shutil.rmtree(work / "obj", ignore_errors=True)

    return cached_dir(dest, build, done="harness") / "harness"


class VerilatorSim:
    """A running co-simulation of ``top`` (a context manager).

    Parameters
    ----------
    verilog : str
        The top's Verilog.
    top : str
        Its module name.
    port : int
        TCP port on 127.0.0.1; 0 picks a free one.
    poll_cycles : int
        Cycles between socket polls (latency against speed; see ``sim/harness.cpp``).
    cache_dir : Path, optional
        Overrides :func:`perturbo.cache.cache_root`.
    start_timeout : float
        Seconds to wait for the harness to listen (after the build).
    accept_timeout : int
        Seconds the harness waits for the host to connect before it gives up.
    trace : Path, optional
        Run the traced build of the harness, writing this FST file; nothing is dumped
        until :meth:`trace_on`, and nothing after :meth:`trace_off`.
    pty : bool
        Serve a pseudo-terminal (:attr:`device`) instead of a TCP port; the harness then
        outlives each host that opens and closes it, as a board does.

    Notes
    -----
    The harness dies with the thread that started it (``PR_SET_PDEATHSIG``), so that no
    simulation outlives a crashed host: call :meth:`start` from a thread that lives as
    long as the simulation (normally the main thread).

    Attributes
    ----------
    port : int
        The port it listens on (after :meth:`start`; None with ``pty``).
    device : str
        The pseudo-terminal's path (after :meth:`start` with ``pty``; else None).
    stats : RunStats or None
        What the harness reported when it stopped.
    returncode : int or None
        The harness's exit status when it stopped (0: the host disconnected or SIGTERM).
    """

    def __init__(self, verilog: str, top: str, *, port: int = 0, poll_cycles: int = 1024,
                 cache_dir: Path | None = None, start_timeout: float = 30.0,
                 accept_timeout: int = 60, trace: Path | None = None, pty: bool = False) -> None:
        if not isinstance(poll_cycles, int) or poll_cycles < 1:
            raise ValueError(f"poll_cycles must be a positive integer, not {poll_cycles!r}")
        self.verilog = verilog
        self.top = top
        self.requested_port = port
        self.poll_cycles = poll_cycles
        self.cache_dir = cache_dir
        self.start_timeout = start_timeout
        self.accept_timeout = accept_timeout
        self.trace = Path(trace) if trace is not None else None
        #: ``(on, off)`` cycle of every traced window, from the harness's TRACE lines (after :meth:`stop`)
        self.trace_windows: list[tuple[int, int | None]] = []
        self.pty = pty
        self.port: int | None = None
        self.device: str | None = None
        self.stats: RunStats | None = None
        self.returncode: int | None = None
        self._process: subprocess.Popen[str] | None = None

    @classmethod
    def from_component(cls, component: object, name: str, **kwargs: object) -> VerilatorSim:
        """Generate ``component``'s Verilog in a :class:`~.top.HarnessTop` (its reset made
        inside) as module ``name`` (see the class for ``kwargs``)."""
        from .top import harness_verilog

        return cls(harness_verilog(component, name), name, **kwargs)

    @property
    def url(self) -> str:
        """The pyserial URL of the running simulation: ``socket://...``, or the pty's path."""
        if self.device is not None:
            return self.device
        if self.port is None:
            raise CosimError("the simulation is not running")
        return f"socket://127.0.0.1:{self.port}"

    def build(self) -> Path:
        """Build the harness if it is not cached; returns the executable."""
        return build_harness(self.verilog, self.top, cache_dir=self.cache_dir, trace=self.trace is not None)

    def bench(self, cycles: int = 2_000_000) -> RunStats:
        """Run the bare model (no socket) for ``cycles`` idle cycles; returns its speed."""
        result = subprocess.run([str(self.build()), "--bench", str(cycles)],
                                capture_output=True, text=True, timeout=600)
        stats = RunStats.parse(result.stderr, "BENCH")
        if result.returncode != 0 or stats is None:
            raise CosimError(f"the harness benchmark failed: {result.stderr[-2000:]}")
        return stats

    def start(self) -> VerilatorSim:
        """Build if needed, start the harness and wait until it listens."""
        if self._process is not None:
            raise CosimError("the simulation is already running")
        binary = self.build()
        self.stats = None
        command = [str(binary), "--poll", str(self.poll_cycles), "--accept-timeout", str(self.accept_timeout)]
        command += ["--pty"] if self.pty else ["--port", str(self.requested_port)]
        if self.trace is not None:
            self.trace.parent.mkdir(parents=True, exist_ok=True)
            command += ["--trace", str(self.trace)]
        self._process = subprocess.Popen(  # stdin: none of the host's (a test worker's channel)
            command, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self._process.stdout is not None
        deadline = time.monotonic() + self.start_timeout
        while True:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([self._process.stdout], [], [], max(0.0, remaining))
            if not ready:
                self.stop()
                raise CosimError(f"the harness did not listen within {self.start_timeout} s")
            line = self._process.stdout.readline()
            if not line:
                _, err = self._process.communicate()
                self._process = None
                raise CosimError(f"the harness exited before listening: {err[-2000:]}")
            if match := re.match(r"PORT (\d+)", line):
                self.port = int(match.group(1))
                return self
            if match := re.match(r"PTY (\S+)", line):
                self.device = match.group(1)
                return self

    def trace_on(self) -> None:
        """Start dumping (a traced simulation only): every cycle the harness runs after the
        bytes the host sends next is in the FST."""
        self._signal_trace(signal.SIGUSR1)

    def trace_off(self) -> None:
        """Stop dumping; the FST is flushed and stays open for a later :meth:`trace_on`."""
        self._signal_trace(signal.SIGUSR2)

    def _signal_trace(self, sig: signal.Signals) -> None:
        # an untraced harness has no handler: the signal would kill it
        if self.trace is None:
            raise CosimError("this simulation was started without trace=; it cannot dump waveforms")
        if not self.running:
            raise CosimError("the simulation is not running")
        assert self._process is not None
        self._process.send_signal(sig)

    @property
    def running(self) -> bool:
        """Whether the harness process is alive."""
        return self._process is not None and self._process.poll() is None

    def stop(self, timeout: float = 10.0) -> RunStats | None:
        """Stop the harness (SIGTERM if it still runs); returns its statistics.

        Raises
        ------
        CosimError
            The simulation reported a read collision on a memory declared free of them
            (:func:`perturbo.hdl.memories.no_read_collision`).
        """
        process = self._process
        if process is None:
            return self.stats
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        self.returncode = process.returncode
        self._process = None
        self.port = None
        self.device = None
        self.stats = RunStats.parse(err or "")
        self.trace_windows = _trace_windows(err or "")
        # a memory declared free of read collisions had one (hdl.memories.no_read_collision):
        # a board build that relies on the declaration would compute something else
        checks = [line for line in (out or "").splitlines() if line.startswith(COLLISION_MESSAGE)]
        if checks:
            raise CosimError("; ".join(checks))
        return self.stats

    def wait(self, timeout: float = 10.0) -> RunStats | None:
        """Wait for the harness to exit by itself (the host disconnected); returns its stats."""
        if self._process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=timeout)
        return self.stop()

    def __enter__(self) -> VerilatorSim:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
