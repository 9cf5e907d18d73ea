"""The serial path end to end without a board: the board top's UART behind a pseudo-terminal.

The co-simulation runs the accelerator with the host link and the UART that a board
build puts on its pins (:func:`perturbo.boards.top.board_link`), and a second UART in
gateware playing the host's serial adapter (:class:`perturbo.hdl.uart.SerialAdapter`),
so every byte crosses the ``rx``/``tx`` pins bit-serially at :data:`DIVISOR` cycles per
bit.  The harness serves the adapter's byte streams on a pseudo-terminal; the host opens
``/dev/pts/<n>`` with pyserial as it would ``/dev/ttyUSB1``, through the ordinary serial
backend: ``perturbo train CONFIG --backend serial --port /dev/pts/<n>``.
"""

from __future__ import annotations

import os
import re
import select
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hdl_configs import VERIFY_CONFIGS

from perturbo import cli
from perturbo.config import Config, parse_config
from perturbo.hdl.bus import Reg, Space
from perturbo.hdl.geometry import config_hash
from perturbo.host.accelerator import AcceleratorBackend
from perturbo.host.link import Link
from perturbo.sim.backend import SERIAL_TOP, serial_cosim
from perturbo.train import load_checkpoint
from perturbo.verify import SideBySide

#: Cycles per bit on the simulated line: a byte is 81 cycles (start, 8 data, stop, and the
#: transmitter's turn-around cycle).
DIVISOR = 8
#: Training steps of the command-line run: two bursts of the sample buffer (4 steps each).
CLI_STEPS = 8


@pytest.fixture(scope="module")
def cfg() -> Config:
    # the co-simulation's accelerator; a validation split of 29 samples (not 144) keeps the
    # evaluation over the simulated line short (the split is not part of the hardware)
    data = VERIFY_CONFIGS["mgd-weight"].model_dump(mode="json")
    data["data"]["validation_fraction"] = 0.02
    return parse_config(data)


def _history(run: Path) -> list[dict]:
    """The run's history records without their wall times."""
    return [{k: v for k, v in record.items() if k != "wall_time"}
            for record in load_checkpoint(run).trainer.history]


def test_train_and_verify_over_a_pty(cfg: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``perturbo train --backend serial --port /dev/pts/N`` equals the golden run; a second host
    session on the same terminal trains side by side with the golden model, step by step; every
    byte the driver counted crossed the simulated line."""
    torch.set_num_threads(1)
    config_file = tmp_path / "serial.yaml"
    config_file.write_text(cfg.to_yaml())
    sim = serial_cosim(cfg, divisor=DIVISOR)
    assert sim.top == SERIAL_TOP
    with sim:
        device = sim.url
        assert device.startswith("/dev/pts/") and stat.S_ISCHR(os.stat(device).st_mode)

        # session 1: the command line, as a user with a board runs it
        serial_run = tmp_path / "serial"
        assert cli.main(["train", str(config_file), "--backend", "serial", "--port", device,
                         "--steps", str(CLI_STEPS), "--out", str(serial_run), "--no-progress"]) == 0
        golden_run = tmp_path / "golden"
        assert cli.main(["train", str(config_file), "--backend", "golden", "--steps", str(CLI_STEPS),
                         "--out", str(golden_run), "--no-progress"]) == 0
        capsys.readouterr()
        serial_state = load_checkpoint(serial_run).backend_state
        golden_state = load_checkpoint(golden_run).backend_state
        assert serial_state["step"] == golden_state["step"] == CLI_STEPS
        for layer, (got, want) in enumerate(zip(serial_state["weights"], golden_state["weights"], strict=True)):
            assert torch.equal(got, want), f"layer {layer}: weights differ after {CLI_STEPS} steps"
        for got, want in zip(serial_state["momentum"], golden_state["momentum"], strict=True):
            assert torch.equal(got, want)
        # every step's loss (the history's means) and the validation accuracy, exactly
        assert _history(serial_run) == _history(golden_run)

        # session 2: the terminal opened again (the simulation, like a board, outlived the
        # first host), the serial backend driven directly, compared after every burst
        # (the backend make_backend builds, with a reply timeout that a loaded machine's slow
        # simulation cannot exceed, so that any retry below means a damaged frame)
        hw = AcceleratorBackend(cfg, Link(device, baudrate=cfg.hardware.baud, timeout=10.0))
        try:
            assert hw.link.ping().ident == config_hash(cfg)  # the board top's ident
            assert hw.link.read_word(Space.REGS, Reg.STEPS_DONE) >= CLI_STEPS  # session 1's state
            run = SideBySide(cfg, hw)
            for _ in range(3):
                diff = run.advance(4)
                assert diff is None, str(diff)
            diff = run.compare_inference(run.splits.val.x[:24])
            assert diff is None, str(diff)
            second = hw.link.stats
        finally:
            hw.close()
        stats = sim.stop()
    assert stats is not None and sim.returncode == 0
    assert second.retries == 0 and second.stale == 0
    # the harness counts the bytes it handed to the host-side UART and took from it: all of
    # them went over the pins; the first session's bytes are the difference
    assert stats.rx > second.sent and stats.tx > second.received
    # and bit-serially: the driver sends a request only after the previous reply, so the
    # line carried one byte at a time, 10 bits of DIVISOR cycles each (a stream top takes a
    # byte per cycle)
    assert stats.cycles >= (stats.rx + stats.tx) * 10 * DIVISOR
    print(f"\n{DIVISOR} cycles/bit: {stats.cycles} cycles, {stats.rx} bytes in, {stats.tx} bytes out, "
          f"{stats.rate / 1e6:.2f} M cycles/s")


def test_serve_command(cfg: Config, tmp_path: Path) -> None:
    """``perturbo serve CONFIG`` prints the terminal, answers there as the board would, and on
    Ctrl-C reports exactly the bytes the host moved."""
    config_file = tmp_path / "serial.yaml"
    config_file.write_text(cfg.to_yaml())
    process = subprocess.Popen([sys.executable, "-m", "perturbo.cli", "serve", str(config_file),
                                "--divisor", str(DIVISOR)],
                               # not the test worker's stdin (pytest-xdist talks to its workers there)
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 300)  # a build when not cached
        assert ready, "perturbo serve printed nothing"
        line = process.stdout.readline()
        match = re.search(r"serves (/dev/pts/\d+)$", line.strip())
        assert match, line
        with Link(match[1], baudrate=cfg.hardware.baud) as link:
            assert link.ping().ident == config_hash(cfg)
            assert link.read_word(Space.REGS, Reg.CONFIG_HASH) == config_hash(cfg)
            sent, received = link.stats.sent, link.stats.received
        process.send_signal(signal.SIGINT)
        try:
            _, err = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:  # say where it hangs (serve dumps its threads on SIGUSR1)
            process.send_signal(signal.SIGUSR1)
            time.sleep(2)
            process.kill()
            _, err = process.communicate()
            pytest.fail(f"perturbo serve did not stop within 30 s of Ctrl-C; its threads:\n{err}")
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert f"{sent} bytes from hosts, {received} to them" in err


def test_serve_refuses_a_bad_divisor(cfg: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config_file = tmp_path / "serial.yaml"
    config_file.write_text(cfg.to_yaml())
    assert cli.main(["serve", str(config_file), "--divisor", "3"]) == 2
    assert capsys.readouterr().err.startswith("perturbo: error: --divisor must be at least 4")
