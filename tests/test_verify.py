"""``perturbo verify`` on the Verilator co-simulation: three rule families pass, a weight
written behind the trainer's back is found at the right step and place, a device of another
configuration fails its identity check, and bad options end in one error line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cosim_checks import find_corrupted_weight
from hdl_configs import VERIFY_CONFIGS

from perturbo.cli import main
from perturbo.config import Config


def write_config(cfg: Config, tmp_path: Path) -> Path:
    path = tmp_path / f"{cfg.name}.yaml"
    path.write_text(cfg.to_yaml())
    return path


@pytest.mark.parametrize("name", list(VERIFY_CONFIGS))
def test_verify_passes(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.set_num_threads(1)
    path = write_config(VERIFY_CONFIGS[name], tmp_path)
    status = main(["verify", str(path), "--backend", "verilator", "--steps", "12", "--every", "3"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "ok  identity" in out and "ok  configuration registers read back" in out
    assert out.strip().splitlines()[-1].startswith(f"PASS: verify-{name} on verilator"), out


def test_momentum_wider_than_a_word_round_trips() -> None:
    """With ``grad_bits: 48`` the momentum words need their bits 32..47: a state whose
    momentum spans the whole width loads and reads back equal, and the device then trains
    on as the golden model does (momentum and weights compared with ``==``)."""
    from perturbo.golden.integer import IntegerModel
    from perturbo.sim.backend import VerilatorBackend
    from perturbo.verify import SideBySide, matrix_difference

    torch.set_num_threads(1)
    cfg = VERIFY_CONFIGS["mgd-weight"]
    gen = torch.Generator().manual_seed(5)
    bits = cfg.numerics.grad_bits
    state = IntegerModel(cfg).state_dict()
    # every magnitude from 0 to the full width, both signs (the high half 0, -1 and others)
    state["momentum"] = [(torch.randint(-(1 << bits - 1), 1 << bits - 1, m.shape, generator=gen)
                          >> torch.randint(0, bits, m.shape, generator=gen)) for m in state["momentum"]]
    assert max(int(m.abs().max()) for m in state["momentum"]) >= 1 << 40
    hw = VerilatorBackend(cfg)
    try:
        hw.load_state_dict(state)
        back = hw.state_dict()["momentum"]
        assert matrix_difference("momentum", back, state["momentum"]) is None
        run = SideBySide(cfg, hw)
        run.gold.load_state_dict(state)
        hw.load_state_dict(state)
        assert run.advance(3) is None
    finally:
        hw.close()


def test_corrupted_weight_is_found() -> None:
    """A weight written behind the trainer's back between steps 3 and 4 is the first
    difference, named in full (every shipped example does the same in
    test_verilator_backend.py)."""
    torch.set_num_threads(1)
    diff = find_corrupted_weight(VERIFY_CONFIGS["mgd-weight"])
    assert str(diff) == (f"step 4: weights differ: layer 0 (mgd-weight) neuron 4 input 39: device {diff.device} "
                         f"golden {diff.golden} (1 differ in this layer)")


def test_serial_verify_of_another_configuration_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The serial backend on the ALR co-simulation (a TCP port): its own configuration passes;
    the MGD configuration finds CONFIG_HASH differing before anything is written, exit 1."""
    from perturbo.hdl.geometry import config_hash
    from perturbo.sim.backend import COSIM_TOP, cosim_verilog
    from perturbo.sim.cosim import VerilatorSim

    torch.set_num_threads(1)
    alr, mgd = VERIFY_CONFIGS["alr"], VERIFY_CONFIGS["mgd-weight"]
    with VerilatorSim(cosim_verilog(alr), COSIM_TOP) as sim:
        status = main(["verify", str(write_config(alr, tmp_path)), "--backend", "serial", "--port", sim.url,
                       "--steps", "4"])
    assert status == 0, capsys.readouterr().out
    with VerilatorSim(cosim_verilog(alr), COSIM_TOP) as sim:
        url = sim.url
        status = main(["verify", str(write_config(mgd, tmp_path)), "--backend", "serial", "--port", url])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert status == 1
    assert last == (f"FAIL: verify-mgd-weight on serial ({url}): register CONFIG_HASH differ: "
                    f"device {config_hash(alr):#010x} golden {config_hash(mgd):#010x}")


@pytest.mark.parametrize(("argv", "message"), [
    (["verify", "{cfg}", "--backend", "serial"], "the serial backend needs the board's port"),
    (["verify", "{cfg}", "--steps", "0"], "--steps and --every take positive integers"),
    (["train", "{cfg}", "--out", "{out}", "--waves", "3"], "--waves takes STEP:COUNT"),
    (["train", "{cfg}", "--out", "{out}", "--waves", "0:2"], "--waves takes STEP:COUNT"),
    (["train", "{cfg}", "--out", "{out}", "--waves", "3:2", "--backend", "golden"],
     "--waves dumps the Verilator co-simulation"),
])
def test_bad_options_are_one_line(argv: list[str], message: str, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(VERIFY_CONFIGS["mgd-weight"], tmp_path)
    argv = [a.replace("{cfg}", str(cfg)).replace("{out}", str(tmp_path / "run")) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("perturbo: error: ") and message in err[0], err
