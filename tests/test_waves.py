"""Waveforms on demand: a failing cocotb testbench names its FST dump, and the co-simulation
dumps a window of training steps (docs/debugging.md)."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest
from cocotb_build import SIMULATORS, run_cocotb
from hdl_configs import UNIT_CONFIGS, VERIFY_CONFIGS, config_env

from perturbo.hdl.geometry import Geometry
from perturbo.hdl.loss import LossUnit


def fst_times(path: Path) -> tuple[int, int]:
    """Start and end time of an FST file, from its header block (type 0, then the block
    length, start time and end time as big-endian 64-bit words)."""
    head = path.read_bytes()[:25]
    assert len(head) == 25 and head[0] == 0, f"{path} does not start with an FST header block"
    _, start, end = struct.unpack(">QQQ", head[1:])
    return start, end


@pytest.mark.parametrize("sim", SIMULATORS)
def test_failing_testbench_names_its_waveform(sim: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """tb_loss told to expect every loss plus one fails; the message names a non-empty FST."""
    monkeypatch.setenv("PERTURBO_WAVES", "1")
    cfg = UNIT_CONFIGS["tiny"]
    env = {**config_env(cfg), "PERTURBO_TB_LOSS_BIAS": "1"}
    with pytest.raises(AssertionError) as failure:
        run_cocotb(LossUnit(Geometry(cfg), 16), "loss_top", "tb_loss", extra_env=env, simulator=sim)
    message = str(failure.value)
    found = re.search(r"waveform: (\S+\.fst)", message)
    assert found, f"no waveform path in: {message}"
    path = Path(found[1])
    assert path.is_file() and path.stat().st_size > 0, path
    start, end = fst_times(path)
    assert end > start
    assert "-waves-" in path.parent.parent.name, "a traced build must have its own build directory"


def test_cosim_dumps_a_window_of_steps(tmp_path: Path) -> None:
    """Steps 3-4 of 6 are in the FST, and only they: its time span is the harness's window."""
    from perturbo.sim.backend import VerilatorBackend, WaveWindow
    from perturbo.verify import SideBySide

    cfg = VERIFY_CONFIGS["mgd-weight"]
    path = tmp_path / "waves-3-4.fst"
    hw = VerilatorBackend(cfg, waves=WaveWindow(3, 2, path))
    try:
        run = SideBySide(cfg, hw)
        for _ in range(6):  # the traced model trains as the untraced one does
            assert run.advance(1) is None
    finally:
        hw.close()
    [(on, off)] = hw.sim.trace_windows
    assert path.stat().st_size > 0
    # FST time is 2 * cycle (+1 on the rising edge), see sim/harness.cpp
    assert fst_times(path) == (2 * on, 2 * (off - 1) + 1)
    assert on > 0 and off < hw.sim.stats.cycles, "the window must leave steps 1-2 and 5-6 out"
