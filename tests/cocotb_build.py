"""Build-once-per-configuration helper that runs cocotb testbenches on Verilator and Icarus.

Every hardware unit's pytest entry point calls :func:`run_cocotb`.  The Verilog
is generated from the Amaranth component and the verilated model is built in a
directory keyed by a hash of that Verilog and the build options, so a unit's
model is built once per configuration and reused by every later test and run
(``cocotb/`` in perturbo's build cache, :mod:`perturbo.cache`, or ``$PERTURBO_BUILD_DIR``:
cached across runs and checkouts; parallel test workers build each model once).

Every testbench also runs on Icarus Verilog (Debian's ``iverilog``, ``-g2005``; see
:data:`ICARUS_ARGS`), a four-state simulator: an input a testbench leaves undriven reads
X there where Verilator's two-state start reads 0, so both must pass.  The testbench sees
``PERTURBO_SIM`` (``verilator`` or ``icarus``); Icarus runs about 25x slower, so the
host-link fuzz sends 250 frames there instead of 1 000 (tests/test_hostlink.py); every
other testbench runs the same stimulus on both.

Waveforms on demand: with ``PERTURBO_WAVES=1`` in the environment every testbench dumps
its signals, on Verilator as FST (``--trace-fst``), on Icarus as FST too (``vvp -fst``
with a small ``$dumpvars`` module, :func:`_icarus_dumper`), into ``waves/<test>.fst`` in its build
directory, and a failing test's message names that file.  The Verilog then keeps
Amaranth's ``src`` attributes (the Python line of every signal).  Traced models are built
in their own directories (the cache key holds the flag), so untraced runs stay fast.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from amaranth.back import verilog

from perturbo.cache import cache_root, cached_dir, digest
from perturbo.sim.toolchain import verilator_env

REPO = Path(__file__).resolve().parent.parent
# Shared with the co-simulation cache, outside the checkout, so a fresh clone on the
# same machine (CI) reuses every model built before; keyed by a hash of the Verilog.
BUILD_ROOT = Path(os.environ.get("PERTURBO_BUILD_DIR", cache_root() / "cocotb"))

# Amaranth's generated Verilog trips these warnings, which are fatal by default in
# Verilator; none of them is a bug in generated code (widths are explicit there).
VERILATOR_WAIVERS = ["-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-Wno-CASEINCOMPLETE", "-Wno-fatal"]

#: The two simulators every unit testbench runs on.
SIMULATORS = ["verilator", "icarus"]
#: Icarus flags.  ``-g2005``: Amaranth's Verilog evaluates combinational ``always @*``
#: blocks at time zero through a dummy assignment that produces no event in Icarus'
#: SystemVerilog mode (cocotb's default ``-g2012``; the later flag wins), so their
#: outputs would stay X until an input changes.
ICARUS_ARGS = ["-g2005"]
#: Amaranth's Verilog has no `timescale; the testbenches clock in ns.
ICARUS_TIMESCALE = ("1ns", "1ps")
#: Verilator flags of a traced build (the runner adds ``--trace`` before them; the later
#: ``--trace-fst`` sets the format).  Structs whole, not split into one signal per field.
VERILATOR_TRACE_ARGS = ["--trace-fst", "--trace-structs"]


def waves_requested() -> bool:
    """Whether ``PERTURBO_WAVES`` asks for waveforms (anything but empty or ``0``)."""
    return os.environ.get("PERTURBO_WAVES", "").strip() not in ("", "0")


def _run_name(test_module: str, testcase: str | None) -> str:
    """The pytest test running now (else the cocotb module and test), as a file name: the
    tests that share one build (parametrisations, parallel workers) each get their own."""
    current = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]
    name = current.split("::", 1)[-1] if current else f"{test_module}-{testcase or 'all'}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")


def waves_path(build_dir: Path, test_module: str, testcase: str | None) -> Path:
    """Where this run's dump goes: ``waves/<test>.fst`` in the build directory."""
    return build_dir / "waves" / f"{_run_name(test_module, testcase)}.fst"


def _run_test(runner, sim: str, dump: Path | None, **kwargs) -> None:
    """``runner.test(**kwargs)``, its failures as one AssertionError that names the dump."""
    __tracebackhide__ = True  # pytest: the message, not this frame's locals
    from cocotb_tools.runner import get_results

    test_module = kwargs["test_module"]
    where = f" on {sim}" if sim != "verilator" else ""
    wave = f"; waveform: {dump}" if dump is not None else ""
    try:
        results = runner.test(**kwargs)
    except SystemExit as stop:
        # under pytest cocotb's runner exits on a failed test; its log above names the failures
        raise AssertionError(f"cocotb tests failed in {test_module}{where} (exit {stop.code}; "
                             f"see the log above){wave}") from None
    total, failed = get_results(results)
    assert total > 0, f"no cocotb test ran from {test_module}{where} (see {results})"
    assert failed == 0, f"{failed} of {total} cocotb tests failed in {test_module}{where} (see {results}){wave}"


def _run_icarus(text: str, toplevel: str, test_module: str, testcase: str | None,
                extra_env: dict[str, str], waves: bool) -> None:
    import shutil

    from cocotb_tools.runner import get_runner

    assert shutil.which("iverilog"), "Icarus Verilog is missing: install Debian's iverilog (bash .ci/install does)"
    build_dir = BUILD_ROOT / f"icarus-{toplevel}{'-waves' if waves else ''}-" \
        f"{digest(text, repr(ICARUS_ARGS), repr(ICARUS_TIMESCALE), 'waves' if waves else '')}"
    runner = get_runner("icarus")

    def build(work: Path) -> None:
        source = work / f"{toplevel}.v"
        source.write_text(text)
        sources, build_args = [source], ICARUS_ARGS
        if waves:  # a second root module that dumps the top; see _icarus_dumper
            sources, build_args = [source, _icarus_dumper(work, toplevel)], [*ICARUS_ARGS, "-s", "perturbo_waves"]
        runner.build(sources=sources, hdl_toplevel=toplevel, build_dir=work, build_args=build_args,
                     timescale=ICARUS_TIMESCALE, always=True)

    cached_dir(build_dir, build, done="sim.vvp")
    run_dir = _run_dir(build_dir, test_module, testcase)
    dump = waves_path(build_dir, test_module, testcase) if waves else None
    raw = run_dir / f"{toplevel}.fst"
    raw.unlink(missing_ok=True)
    try:
        # waves=True: vvp -fst (FST, not VCD); no build flag, the dumper is our own
        _run_test(runner, "icarus", dump, hdl_toplevel=toplevel, hdl_toplevel_lang="verilog",
                  test_module=test_module, build_dir=build_dir, test_dir=run_dir, testcase=testcase,
                  extra_env={**extra_env, "PERTURBO_TOP_VERILOG": str(build_dir / f"{toplevel}.v")},
                  waves=waves)
    finally:
        if dump is not None and raw.exists():
            dump.parent.mkdir(exist_ok=True)
            raw.replace(dump)


def _icarus_dumper(build_dir: Path, toplevel: str) -> Path:
    """Verilog-2005 module dumping ``toplevel`` to ``<toplevel>.fst`` in the run directory.

    cocotb's own (``build(waves=True)``) declares a SystemVerilog ``string``, which
    ``-g2005`` (:data:`ICARUS_ARGS`) refuses; the name is fixed here and the file moved to
    its per-test name after the run.
    """
    path = build_dir / "perturbo_waves.v"
    path.write_text(f"module perturbo_waves;\ninitial begin\n    $dumpfile(\"{toplevel}.fst\");\n"
                    f"    $dumpvars(0, {toplevel});\nend\nendmodule\n")
    return path


def _run_dir(build_dir: Path, test_module: str, testcase: str | None) -> Path:
    """``runs/<test>/`` in the build directory: the simulator runs there and writes its
    results file, so tests sharing a build on parallel workers never overwrite each other's."""
    return build_dir / "runs" / _run_name(test_module, testcase)


def run_cocotb(component, toplevel: str, test_module: str, *, extra_env: dict[str, str] | None = None,
               testcase: str | None = None, big: bool = False, simulator: str = "verilator",
               library: str = "") -> None:
    """Generate ``component`` as ``toplevel``, build it once, run the cocotb ``test_module``
    on ``simulator`` (``"verilator"`` or ``"icarus"``).

    ``extra_env`` reaches the testbench as environment variables (for instance a
    JSON-encoded configuration); a failing cocotb test fails the calling pytest test.
    ``big``: compile Verilator's run-once code (initialisation, the VPI symbol table)
    at -O0 and only the evaluation code at -O2.  For a design with thousands of signals
    the symbol-table constructor is one huge function that g++ takes 2 s to compile at
    -O0 and more than 5 minutes at -O1 or -O2 (``-CFLAGS -O2`` applies to every file).
    Without ``big`` (the unit testbenches) every file is compiled at -O0: cocotb's Python
    coroutines, awaited at every clock edge, cost more per cycle than the model's
    unoptimised C++, so -O2 only lengthened the build (build and run together, in CPU
    seconds: tb_forward on the digits network 30 against 50; tb_update and tb_correlation
    on digits and DRTP 99 against 128).  ``big`` is for the testbench that runs whole
    training steps, where the model's speed pays for its optimisation.  ``library``:
    Verilog appended to the generated source (models of the vendor cells it instantiates).
    """
    from cocotb_tools.runner import get_runner

    waves = waves_requested()
    # src attributes lead a traced signal back to its Python line; they are in the
    # Verilog, and so in the cache key, only when waves are asked for
    text = verilog.convert(component, name=toplevel, emit_src=waves) + library
    tests_dir = str(Path(__file__).resolve().parent)
    if tests_dir not in sys.path:
        sys.path.insert(0, tests_dir)
    env_common = {
        # cocotb applies pytest's assertion rewriting to every imported module by
        # default; with PYTHONDONTWRITEBYTECODE nothing is cached, and torch alone
        # then takes ~14 s to import.  Rewrite only the testbenches.
        "COCOTB_REWRITE_ASSERTION_FILES": "tb_*.py *_tb.py",
        **(extra_env or {}),
        "PERTURBO_SIM": simulator,
        "PYTHONPATH": os.pathsep.join([tests_dir, str(REPO)]),
    }
    if simulator == "icarus":
        _run_icarus(text, toplevel, test_module, testcase, env_common, waves)
        return
    if simulator != "verilator":
        raise ValueError(f"simulator must be one of {SIMULATORS}, not {simulator!r}")
    trace_args = VERILATOR_TRACE_ARGS if waves else []
    build_args = [*VERILATOR_WAIVERS, *trace_args, "-CFLAGS", "-O0"]
    make_opts = ""
    if big:  # per-file-class optimisation through make variables instead of -CFLAGS
        build_args = [*VERILATOR_WAIVERS, *trace_args]
        make_opts = "OPT_FAST=-O2 OPT_GLOBAL=-O2 OPT_SLOW=-O0"
    build_dir = BUILD_ROOT / f"{toplevel}{'-waves' if waves else ''}-{digest(text, repr(build_args), make_opts)}"
    env = verilator_env()
    os.environ.update(env)
    runner = get_runner("verilator")

    def build(work: Path) -> None:
        source = work / f"{toplevel}.v"
        source.write_text(text)
        saved_makeflags = os.environ.get("MAKEFLAGS", "")
        os.environ["MAKEFLAGS"] = f"{saved_makeflags} {make_opts}".strip()
        try:
            runner.build(sources=[source], hdl_toplevel=toplevel, build_dir=work,
                         build_args=build_args, always=True, waves=waves)
        finally:
            os.environ["MAKEFLAGS"] = saved_makeflags

    cached_dir(build_dir, build, done=toplevel)
    dump = waves_path(build_dir, test_module, testcase) if waves else None
    test_args = []
    if dump is not None:  # cocotb's verilator.cpp: --trace (added by waves=) and --trace-file
        dump.parent.mkdir(exist_ok=True)
        dump.unlink(missing_ok=True)
        test_args = ["--trace-file", str(dump)]
    _run_test(
        runner, "verilator", dump,
        hdl_toplevel=toplevel,
        hdl_toplevel_lang="verilog",
        test_module=test_module,
        build_dir=build_dir,
        test_dir=_run_dir(build_dir, test_module, testcase),
        testcase=testcase,
        extra_env={**env_common, "PERTURBO_TOP_VERILOG": str(build_dir / f"{toplevel}.v")},
        waves=waves,
        test_args=test_args,
    )
