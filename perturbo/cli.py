"""The ``perturbo`` command line.

::

    perturbo config show FILE
    perturbo train CONFIG [--backend golden|verilator|serial] [--out DIR] [--steps N]
                          [--resume | --overwrite] [--float] [--no-progress]
                          [--checkpoint-seconds S] [--waves STEP:COUNT]
    perturbo verify CONFIG [--backend verilator|serial] [--port P] [--steps N] [--every K]
    perturbo eval CHECKPOINT|EXPORT [--split test|val|train] [--backend NAME]
    perturbo export RUN --format npz|pt|onnx [-o FILE]
    perturbo plot RUN [RUN ...] [-o FILE] | --histograms RUN | --boards DIR|REPORT ...
    perturbo synth CONFIG --board icebreaker|ulx3s-85f|orangecrab [-o DIR] [--seed N]
                   [--placer heap|static|sa] [--timing-weight W] [--force]
    perturbo sweep SWEEP [--out DIR] [--address ADDR] [--cpus N] [--resume | --overwrite] [--dry-run]
    perturbo serve CONFIG [--divisor N] [--rx-fifo N]
    perturbo estimate CONFIG [--fmax-mhz F] [--json]

User errors (a bad configuration, a missing data set, an unusable checkpoint, a
backend that is not available) and failures a user can meet (a board or a
co-simulation that stops answering, a run directory that cannot be written) print
one ``perturbo: error:`` line saying what failed and what to do, followed by the
command that resumes the run when a checkpoint exists, and exit with status 2,
without a traceback. ``perturbo verify`` exits with 0 when the device agrees with
the golden model, 1 at the first difference. Ctrl-C lets the step under way finish, saves it and exits
with status 130 (a second Ctrl-C stops at once, keeping the last checkpoint).
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import os
import re
import shlex
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from . import __version__
from .backend import BackendError, BackendFailure, make_backend
from .config import Backend, Config, ConfigError, load_config, parse_config
from .data import DatasetError, load_dataset
from .export import EXPORT_SUFFIXES, FORMATS, ExportError
from .limits import check_fits_target
from .plot import PlotError
from .sweep import SweepError
from .train import (
    CHECKPOINT_NAME,
    CheckpointError,
    TrainingInterrupted,
    evaluate,
    load_checkpoint,
    train,
)


class RunError(RuntimeError):
    """A run that failed part-way: the message says what failed, what to do, and how to resume."""


class UsageError(ValueError):
    """An option value the command cannot use (the message says which form it takes)."""


#: Exceptions that are the user's to fix: reported in one message, exit status 2.
USER_ERRORS = (ConfigError, DatasetError, CheckpointError, BackendError, RunError, SweepError, ExportError,
               PlotError, UsageError)
EXIT_DIFFERENCE = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
#: the reader of the output went away (``perturbo estimate ... | head``): 128 + SIGPIPE, as a
#: program the signal stops
EXIT_BROKEN_PIPE = 141
#: Boards ``perturbo synth`` builds for (perturbo.boards.top.BOARDS).
SYNTH_BOARDS = ["icebreaker", "ulx3s-85f", "orangecrab"]
#: nextpnr's placers (perturbo.boards.report.PLACERS, named here so that the command line
#: does not import Amaranth to parse its arguments)
SYNTH_PLACERS = ["heap", "static", "sa"]


class _Parser(argparse.ArgumentParser):
    """argparse with perturbo's one-line error: ``perturbo: error: ...``, exit 2 (the
    subcommands' parsers are of this class too: ``add_subparsers`` takes its parent's)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"perturbo: error: {message} (`{self.prog} --help` lists the options)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="perturbo",
        description="Train networks without backpropagation on FPGA accelerators, "
                    "their simulations and their golden models.",
    )
    p.add_argument("--version", action="version", version=f"perturbo {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    cfg = sub.add_parser("config", help="inspect configuration files")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = cfg_sub.add_parser("show", help="print the fully resolved configuration as YAML")
    show.add_argument("file", type=Path, metavar="FILE")

    backends = [b.value for b in Backend]
    tr = sub.add_parser("train", help="train a network from a configuration file")
    tr.add_argument("config", type=Path, metavar="CONFIG")
    tr.add_argument("--backend", choices=backends, default=Backend.VERILATOR.value,
                    help="where the network trains: the Verilator co-simulation of the accelerator (default), "
                         "the golden model in-process, or a board on a serial port")
    tr.add_argument("--out", type=Path, metavar="DIR",
                    help="run directory (default: runs/<config name>)")
    tr.add_argument("--steps", type=int, metavar="N", help="override training.steps")
    again = tr.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue from the checkpoint in the run directory")
    again.add_argument("--overwrite", action="store_true",
                       help="start afresh even if the run directory holds a checkpoint")
    tr.add_argument("--port", metavar="URL",
                    help="serial backend: the board's port or any pyserial URL (socket://host:port)")
    tr.add_argument("--float", dest="float_reference", action="store_true",
                    help="train the float reference of the rule instead of the integer model")
    tr.add_argument("--no-progress", dest="progress", action="store_false",
                    help="no progress bar")
    tr.add_argument("--checkpoint-seconds", type=float, metavar="S",
                    help="override training.checkpoint_seconds: also checkpoint every S seconds "
                         "(default 60; 0: only every eval_every steps)")
    tr.add_argument("--waves", metavar="STEP:COUNT",
                    help="verilator backend: dump every cycle of COUNT training steps from step STEP (counted "
                         "from 1) to RUN/waves-STEP-LAST.fst, on a separately built traced model")

    ve = sub.add_parser("verify", help="check a device's registers and training against the golden model")
    ve.add_argument("config", type=Path, metavar="CONFIG")
    ve.add_argument("--backend", choices=[Backend.VERILATOR.value, Backend.SERIAL.value],
                    default=Backend.VERILATOR.value, help="the co-simulation (default) or a board on a serial port")
    ve.add_argument("--port", metavar="URL", help="serial backend: the board's port or any pyserial URL")
    ve.add_argument("--steps", type=int, default=32, metavar="N", help="training steps to compare (default 32)")
    ve.add_argument("--every", type=int, default=1, metavar="K",
                    help="read the device's state back every K steps (default 1: the exact step of a difference)")

    ev = sub.add_parser("eval", help="accuracy of a checkpoint or an exported network on a data split")
    ev.add_argument("checkpoint", type=Path, metavar="CHECKPOINT",
                    help=f"a checkpoint file, a run directory (holding {CHECKPOINT_NAME}), or a file written "
                         "by perturbo export (.npz, .pt, .onnx: evaluated in-process on its stored configuration's "
                         "data, an .onnx graph on onnxruntime)")
    ev.add_argument("--split", choices=["test", "val", "train"], default="test")
    ev.add_argument("--backend", choices=backends,
                    help="evaluate on this backend (default: the one that trained it)")
    ev.add_argument("--port", metavar="URL", help="serial backend: the board's port or pyserial URL")

    ex = sub.add_parser("export", help="write a trained network as integers and as an equivalent float model")
    ex.add_argument("run", type=Path, metavar="RUN", help="a run directory or a checkpoint file")
    ex.add_argument("--format", required=True, choices=FORMATS,
                    help="npz (numpy arrays + JSON metadata), pt (torch tensors + JSON metadata), onnx (a graph of "
                         "standard ONNX operators; needs the onnx package, checked on onnxruntime if installed)")
    ex.add_argument("-o", "--out", type=Path, metavar="FILE", help="output file (default: RUN/model.FORMAT)")

    pl = sub.add_parser("plot", help="training curves of runs, weight histograms, or board reports as a PNG")
    pl.add_argument("paths", type=Path, nargs="+", metavar="RUN",
                    help="run directories (curves from history.json); with --boards: report.json files or "
                         "directories holding them")
    what = pl.add_mutually_exclusive_group()
    what.add_argument("--histograms", action="store_true",
                      help="per-layer histograms of the weights in one run's checkpoint")
    what.add_argument("--boards", action="store_true",
                      help="resources and Fmax of perturbo synth builds (their report.json files)")
    pl.add_argument("-o", "--out", type=Path, metavar="FILE",
                    help="the PNG (default: runs.png, RUN/histograms.png, or boards.png)")

    # board names are listed here rather than imported: perturbo.boards pulls in Amaranth
    gen = sub.add_parser("gen", help="write the accelerator's Verilog (lint-clean under verilator -Wall)")
    gen.add_argument("config", type=Path, metavar="CONFIG")
    gen.add_argument("-o", "--out", type=Path, default=Path("build"), metavar="DIR",
                     help="output directory (default: build)")

    es = sub.add_parser("estimate", help="predict cycles per step, samples per second, MAC utilisation and "
                                         "memory use of the accelerator, from the configuration alone")
    es.add_argument("config", type=Path, metavar="CONFIG")
    es.add_argument("--fmax-mhz", type=float, metavar="F",
                    help="the clock the rates are given at (default: hardware.clock_mhz, else 12 MHz)")
    es.add_argument("--json", action="store_true", help="print the estimate as JSON")

    sy = sub.add_parser("synth", help="build the accelerator for an FPGA board; report its use and Fmax")
    sy.add_argument("config", type=Path, metavar="CONFIG")
    sy.add_argument("--board", required=True, choices=SYNTH_BOARDS)
    sy.add_argument("-o", "--out", type=Path, metavar="DIR",
                    help="build directory root (default: perturbo's cache, boards/)")
    sy.add_argument("--seed", type=int, default=None,
                    help="nextpnr placement seed (default: the config's hardware.placement_seed, 1 unless set)")
    sy.add_argument("--placer", choices=SYNTH_PLACERS,
                    help="nextpnr's placer (default: the board's for the lane count; the ULX3S "
                         "places 32 lanes and more with static, which routes them)")
    sy.add_argument("--timing-weight", type=int, default=None, metavar="W",
                    help="the heap placer's timing weight (default: the config's "
                         "hardware.placement_timing_weight, else nextpnr's 10)")
    sy.add_argument("--force", action="store_true", help="build again even if the build is cached")

    se = sub.add_parser("serve", help="co-simulate the board top, UART pins and all, on a pseudo-terminal: "
                                      "the serial backend without a board")
    se.add_argument("config", type=Path, metavar="CONFIG")
    se.add_argument("--divisor", type=int, default=8, metavar="N",
                    help="simulated clock cycles per bit on the UART lines (at least 4; default 8); "
                         "the line's speed falls with it, and the driver's reply timeouts allow for hardware.baud")
    se.add_argument("--rx-fifo", type=int, default=16, metavar="N",
                    help="bytes the board's UART buffers (default 16, as on the ECP5 boards; 0 on the iCEBreaker)")

    sw = sub.add_parser("sweep", help="search over config keys on Ray: every trial an ordinary training run")
    sw.add_argument("sweep", type=Path, metavar="SWEEP", help="a sweep file (docs/tuning.md, examples/sweeps/)")
    sw.add_argument("--out", type=Path, metavar="DIR", help="output directory (default: sweeps/<name>)")
    sw.add_argument("--address", metavar="ADDR",
                    help="an existing Ray cluster (host:6379 or ray://host:10001); default: a local instance")
    sw.add_argument("--cpus", type=int, metavar="N", help="CPUs of the local Ray instance (default: all)")
    sw_again = sw.add_mutually_exclusive_group()
    sw_again.add_argument("--resume", action="store_true", help="continue an interrupted sweep in --out")
    sw_again.add_argument("--overwrite", action="store_true", help="start the sweep in --out afresh")
    sw.add_argument("--dry-run", action="store_true", help="check the sweep file and list the grid; run nothing")
    sw.add_argument("--verbose", type=int, default=0, choices=[0, 1, 2], help="Ray Tune's status output")
    return p


def _with(cfg: Config, source: str, flag: str, section: str, **values: object) -> Config:
    """``cfg`` with the keys ``values`` of ``section`` set from the command line's ``flag``,
    validated as the file's are (an error names the flag)."""
    data = cfg.model_dump(mode="json")
    data[section] = {**data[section], **values}
    return parse_config(data, f"{source} with {flag}")


def _resume_command(args: argparse.Namespace, out: Path) -> str:
    """The command line that continues this run from its checkpoint."""
    words = ["perturbo", "train", str(args.config), "--out", str(out), "--resume"]
    if args.backend != Backend.VERILATOR.value:
        words += ["--backend", args.backend]
    if args.port is not None:
        words += ["--port", args.port]
    if args.float_reference:
        words.append("--float")
    return " ".join(shlex.quote(w) for w in words)


def _checkpoint_note(args: argparse.Namespace, out: Path) -> str:
    """Where the run stands: the intact checkpoint and the resume command, or that there is none."""
    path = out / CHECKPOINT_NAME
    if not path.exists():
        return "  no checkpoint was written; run the same command again to start over"
    try:
        step = load_checkpoint(path).trainer.step
    except CheckpointError as err:
        return f"  the checkpoint in {out} cannot be used ({err}); start over with --overwrite"
    return f"  the checkpoint of step {step} in {out} is intact; continue with:\n    {_resume_command(args, out)}"


def _failure(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


def _default_out(cfg: Config) -> Path:
    return Path("runs") / (re.sub(r"[^A-Za-z0-9._-]+", "_", cfg.name).strip(".") or "run")


def _cmd_config_show(args: argparse.Namespace) -> int:
    sys.stdout.write(load_config(args.file).to_yaml())
    return 0


def _wave_window(text: str | None, backend: str, out: Path) -> object | None:
    """``--waves STEP:COUNT`` as a :class:`~perturbo.sim.backend.WaveWindow` in the run directory."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", text)
    if not match or int(match[1]) < 1 or int(match[2]) < 1:
        raise UsageError(f"--waves takes STEP:COUNT, the first traced step (from 1) and how many steps, "
                         f"such as 10:2; not {text!r}")
    if backend != Backend.VERILATOR.value:
        raise UsageError(f"--waves dumps the Verilator co-simulation; the {backend} backend has no signals to "
                         "dump: add --backend verilator")
    from perturbo.sim.backend import WaveWindow

    first, count = int(match[1]), int(match[2])
    return WaveWindow(first, count, out / f"waves-{first}-{first + count - 1}.fst")


def _cmd_train(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    if args.steps is not None:
        cfg = _with(cfg, str(args.config), f"--steps {args.steps}", "training", steps=args.steps)
    if args.checkpoint_seconds is not None:
        cfg = _with(cfg, str(args.config), f"--checkpoint-seconds {args.checkpoint_seconds}", "training",
                    checkpoint_seconds=args.checkpoint_seconds)
    out = args.out if args.out is not None else _default_out(cfg)
    waves = _wave_window(args.waves, args.backend, out)
    splits = load_dataset(cfg)  # data problems surface before a backend is built
    backend = make_backend(cfg, args.backend, float_reference=args.float_reference, port=args.port,
                           waves=waves)
    try:
        result = train(cfg, backend, out, resume=args.resume, progress=args.progress,
                       overwrite=args.overwrite, splits=splits, backend_name=args.backend,
                       float_reference=args.float_reference)
    except TrainingInterrupted as stop:
        what = f"step {stop.step} saved" if stop.saved else "the state could not be saved"
        print(f"\ninterrupted; {what}.\n{_checkpoint_note(args, out)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print(f"\ninterrupted.\n{_checkpoint_note(args, out)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BackendFailure as err:
        todo = {
            Backend.SERIAL.value: "check the board, its cable and --port; reset a board that stopped answering",
            Backend.VERILATOR.value: "the co-simulation died or stopped answering; run again",
        }.get(args.backend, "run again")
        raise RunError(f"training on the {args.backend} backend failed: {_failure(err)}; {todo}\n"
                       f"{_checkpoint_note(args, out)}") from None
    except OSError as err:
        where = err.filename if err.filename else out
        raise RunError(f"cannot write the run directory {out} ({where}: {err.strerror or err}); "
                       "free some space or make it writable, or choose another --out\n"
                       f"{_checkpoint_note(args, out)}") from None
    finally:
        with contextlib.suppress(Exception):  # a broken link cannot be closed cleanly
            backend.close()
    acc = "n/a" if result.val_accuracy is None else f"{result.val_accuracy:.4f}"
    print(f"{cfg.name}: step {result.step}, validation accuracy {acc}")
    print(f"  checkpoint {result.checkpoint}\n  history    {result.history_path}\n"
          f"  curves     {result.curves_path}")
    if waves is not None:
        _print_waves(waves, backend)
    return 0


def _print_waves(waves: object, backend: object) -> None:
    windows = backend.sim.trace_windows  # known once the harness stopped (train closed it)
    if not windows:
        print(f"  waves      none: the run never reached step {waves.first}", file=sys.stderr)
        return
    cycles = ", ".join(f"{on}-{off if off is not None else 'end'}" for on, off in windows)
    print(f"  waves      {waves.path} (steps {waves.first}-{waves.last}, cycles {cycles})")


def _verify_device(cfg: Config, args: argparse.Namespace) -> tuple[object | None, list]:
    """The device under test, or None and the identity registers that already differ."""
    from .verify import identity_differences

    if args.backend == Backend.VERILATOR.value:
        return make_backend(cfg, args.backend), []
    if args.port is None:
        raise UsageError("the serial backend needs the board's port: --port /dev/ttyUSB1 (any pyserial URL)")
    from perturbo.host.accelerator import AcceleratorBackend
    from perturbo.host.link import Link

    try:
        link = Link(args.port, baudrate=cfg.hardware.baud)
    except OSError as err:
        raise BackendError(f"cannot open {args.port}: {_failure(err)}; check --port and the cable") from None
    # the identity is read before the backend writes a register: a board running another
    # configuration's bitstream is a difference to report, not a device to configure
    found = identity_differences(cfg, link)
    if found:
        link.close()
        return None, found
    return AcceleratorBackend(cfg, link), []


def _cmd_verify(args: argparse.Namespace) -> int:
    from .verify import Report, verify

    cfg = load_config(args.config)
    if args.steps < 1 or args.every < 1:
        raise UsageError(f"--steps and --every take positive integers, not {args.steps} and {args.every}")
    load_dataset(cfg)  # data problems surface before a device is started
    hw, found = _verify_device(cfg, args)
    if hw is None:
        report = Report(difference=found[0])
    else:
        try:
            report = verify(cfg, hw, steps=args.steps, every=args.every, progress=lambda s: print(f"  ok  {s}"))
        finally:
            hw.close()
    where = f"{cfg.name} on {args.backend}" + (f" ({args.port})" if args.port else "")
    if report.passed:
        print(f"PASS: {where} agrees with the golden model ({report.steps} steps)")
        return 0
    print(f"FAIL: {where}: {report.difference}")
    return EXIT_DIFFERENCE


def _cmd_gen(args: argparse.Namespace) -> int:
    from perturbo.hdl.generate import generate

    cfg = load_config(args.config)
    check_fits_target(cfg, str(args.config))
    try:
        path = generate(cfg, args.out)
    except ValueError as err:
        raise ConfigError(f"{args.config}: {err}") from None
    print(f"{path} (top module perturbo_accelerator), {path.with_suffix('.vlt')} (lint waivers), "
          f"{path.with_suffix('.json')} (register map)")
    return 0


def _cmd_estimate(args: argparse.Namespace) -> int:
    import json

    from perturbo.estimate import estimate, format_estimate
    from perturbo.hdl.accelerator import check_supported

    cfg = load_config(args.config)
    if args.fmax_mhz is not None and not args.fmax_mhz > 0:
        raise UsageError(f"--fmax-mhz takes a positive frequency in MHz, not {args.fmax_mhz:g}")
    try:
        check_supported(cfg)
    except ValueError as err:
        raise ConfigError(f"{args.config}: {err}") from None
    check_fits_target(cfg, str(args.config))
    est = estimate(cfg, args.fmax_mhz)
    print(json.dumps(est.as_dict(), indent=2) if args.json else format_estimate(est))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from perturbo.backend import check_accelerator
    from perturbo.sim.backend import serial_cosim
    from perturbo.sim.toolchain import ToolchainError

    cfg = load_config(args.config)
    if args.divisor < 4:
        raise UsageError(f"--divisor must be at least 4 cycles per bit (the UART samples mid-bit), not {args.divisor}")
    if args.rx_fifo < 0:
        raise UsageError(f"--rx-fifo must be 0 or more bytes, not {args.rx_fifo}")
    check_accelerator(cfg)
    # `kill -USR1` prints where every thread of a serve that does not stop is (a diagnosis aid)
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    # a process started with SIGINT ignored (a shell's background job; a pytest-xdist worker's
    # child, where CI saw serve sleep through its Ctrl-C) would never stop on it otherwise
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sim = serial_cosim(cfg, divisor=args.divisor, rx_fifo_depth=args.rx_fifo)
    try:
        try:
            sim.start()
        except ToolchainError as err:
            raise BackendError(str(err)) from None
        except BackendFailure as err:
            raise BackendError(f"the serial co-simulation could not be started: {_failure(err)}; "
                               "check the Verilator install (bash .ci/install)") from None
        # flushed at once: a script reads the device from this line
        print(f"{cfg.name}: the board top ({args.divisor} cycles per bit on its UART pins) serves {sim.url}\n"
              f"  perturbo train {shlex.quote(str(args.config))} --backend serial --port {sim.url}\n"
              "  Ctrl-C stops it", flush=True)
        while sim.running:
            time.sleep(0.2)
        sim.stop()
        raise BackendFailure(f"the co-simulation exited by itself (status {sim.returncode})")
    except KeyboardInterrupt:
        stats = sim.stop()
        if stats is not None:
            print(f"\nstopped after {stats.cycles} cycles ({stats.rate / 1e6:.2f} M cycles/s); "
                  f"{stats.rx} bytes from hosts, {stats.tx} to them", file=sys.stderr)
        return 0
    finally:
        sim.stop()


def _cmd_eval(args: argparse.Namespace) -> int:
    if args.checkpoint.suffix in EXPORT_SUFFIXES and not args.checkpoint.is_dir():
        return _eval_export(args)
    ckpt = load_checkpoint(args.checkpoint)
    name = args.backend or ckpt.backend.get("name")
    if name not in {b.value for b in Backend}:
        raise CheckpointError(
            f"{args.checkpoint} was written by a {name!r} backend ({ckpt.backend.get('class')}); "
            "choose the backend to evaluate it on with --backend"
        )
    splits = load_dataset(ckpt.config)
    backend = make_backend(ckpt.config, name, float_reference=bool(ckpt.backend.get("float_reference")),
                           port=args.port)
    try:
        try:
            backend.load_state_dict(ckpt.backend_state)
        except (KeyError, ValueError, TypeError, RuntimeError) as err:
            raise CheckpointError(
                f"{args.checkpoint}: the {name} backend cannot load this state: {err}"
            ) from None
        acc = evaluate(ckpt.config, backend, args.split, splits=splits)
    finally:
        backend.close()
    n = len(splits.split(args.split))
    print(f"{ckpt.config.name} at step {ckpt.trainer.step}: {args.split} accuracy {acc:.4f} "
          f"({round(acc * n)}/{n})")
    return 0


def _eval_export(args: argparse.Namespace) -> int:
    from .export import evaluate_export, load_export

    if args.backend is not None or args.port is not None:
        raise ExportError(f"{args.checkpoint} is an exported network, evaluated in-process: "
                          "--backend and --port apply to checkpoints")
    net = load_export(args.checkpoint)
    acc, n = evaluate_export(net, args.split)
    meta = net.metadata
    print(f"{meta['name']} at step {meta['step']}: {args.split} accuracy {acc:.4f} ({round(acc * n)}/{n}) "
          f"[{meta['kind']} export {args.checkpoint}]")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export_run

    result = export_run(args.run, args.format, args.out)
    meta = result.network.metadata
    if result.max_score_diff == 0:
        same = "the same INT8 scores" if meta["kind"] == "integer" else "the same scores"
    else:  # a float export may differ in the last bits, never in a prediction (export_run checks)
        same = f"the same predictions (scores within {result.max_score_diff:.2g})"
    on = "" if result.checked_with == "torch" else f" (run on {result.checked_with})"
    print(f"{result.path}: {meta['name']} at step {meta['step']}, {meta['kind']} export; "
          f"test accuracy {result.test_accuracy:.4f} ({meta['test']['samples']} samples), "
          f"{same} as the checkpoint{on}")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from .plot import plot_boards, plot_histograms, plot_runs

    if args.histograms:
        if len(args.paths) != 1:
            raise PlotError("--histograms takes one run directory or checkpoint")
        path = plot_histograms(args.paths[0], args.out)
    elif args.boards:
        path = plot_boards(args.paths, args.out)
    else:
        path = plot_runs(args.paths, args.out)
    print(path)
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    """Build for a board; exit 0 if the design fits and meets its clock, 1 if it does not fit,
    misses timing (Fmax below ``hardware.clock_mhz``) or the build failed."""
    cfg = load_config(args.config)
    if args.timing_weight is not None:  # validated as the configuration's key is
        cfg = _with(cfg, str(args.config), f"--timing-weight {args.timing_weight}", "hardware",
                    placement_timing_weight=args.timing_weight)
    check_fits_target(cfg, str(args.config))
    from perturbo.boards.build import ToolchainError, build

    try:
        report = build(cfg, args.board, args.out, seed=args.seed, placer=args.placer, force=args.force)
    except (ToolchainError, ValueError) as err:
        print(f"perturbo: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(f"report: {Path(report.build_dir) / 'report.json'}")
    if report.status == "fails-timing":
        print(f"perturbo: {report.message}", file=sys.stderr)
    return 0 if report.status == "ok" else 1


def _cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import grid_size, load_sweep, run_sweep, trial_grid

    sweep = load_sweep(args.sweep)  # the whole file is checked before Ray is imported
    spec = sweep.spec
    if args.dry_run:
        n = grid_size(sweep) if spec.method == "grid" else spec.trials
        built = f", each built for {spec.synth.board}" if spec.synth is not None else ""
        print(f"{spec.name}: {n} trials ({spec.method}) of {sweep.steps} steps on the {spec.backend} backend"
              f"{built}, {spec.cpus_per_trial:g} CPUs each; keys {', '.join(spec.space)}")
        if spec.method == "grid":
            for params in trial_grid(sweep):
                print("  " + ", ".join(f"{k}={v!r}" for k, v in params.items()))
        return 0
    result = run_sweep(sweep, args.out, address=args.address, cpus=args.cpus, resume=args.resume,
                       overwrite=args.overwrite, verbose=args.verbose)
    print(f"{spec.name}: {len(result.trials)} trials in {result.wall_time:.0f} s "
          f"({sum(r['status'] == 'done' for r in result.trials)} finished, "
          f"{sum(r['status'] == 'stopped' for r in result.trials)} stopped early, "
          f"{sum(r['status'] == 'interrupted' for r in result.trials)} interrupted, "
          f"{sum(r['status'] == 'error' for r in result.trials)} failed)")
    for r in result.trials[:5]:
        acc = "n/a" if r["val_accuracy"] is None else f"{r['val_accuracy']:.4f}"
        print(f"  {r['trial']}  {r['status']:7s} val {acc} at step {r['steps']}  "
              + ", ".join(f"{k}={v!r}" for k, v in r["params"].items()))
    if result.best is not None:
        print(f"best (validation): {result.best['trial']}, {result.out_dir / 'best.yaml'}")
    plots = ["curves.png", "keys.png", *(["pareto.png"] if spec.synth is not None else [])]
    print(f"results: {result.results_csv}, {result.out_dir / 'results.json'}, "
          + ", ".join(str(result.out_dir / p) for p in plots))
    if result.unfinished:
        print(f"interrupted with {result.unfinished} trials unfinished; continue with:\n"
              f"  perturbo sweep {args.sweep} --out {result.out_dir} --resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (the console script exits with it)."""
    args = _parser().parse_args(argv)
    commands = {"config": _cmd_config_show, "train": _cmd_train, "eval": _cmd_eval,
                "synth": _cmd_synth, "gen": _cmd_gen, "sweep": _cmd_sweep,
                "export": _cmd_export, "plot": _cmd_plot, "verify": _cmd_verify, "serve": _cmd_serve,
                "estimate": _cmd_estimate}
    try:
        return commands[args.command](args)
    except USER_ERRORS as err:
        print(f"perturbo: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BackendFailure as err:
        print(f"perturbo: error: the backend failed: {_failure(err)}; check the board or run again",
              file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # stop quietly; the rest of the output goes nowhere, so that the flush at exit
        # raises nothing either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
