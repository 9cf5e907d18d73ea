"""The inference-only accelerator (``hardware.training: false``, the cost of learning in
docs/boards.md): it runs inference bit-identically to the golden model on the Verilator
co-simulation, refuses TRAIN (the host driver with a message, the bus with ``err``) and
the G memory, and leaves the training units and registers out of the design."""

from __future__ import annotations

import pytest
import torch

from perturbo.config import Config, parse_config
from perturbo.golden.integer import IntegerModel, init_weights
from perturbo.hdl.accelerator import Accelerator
from perturbo.hdl.bus import Command, Reg, Space
from perturbo.hdl.geometry import config_hash
from perturbo.hdl.registers import absent_registers, register_map

#: A small digits-shaped network on 3 lanes (a last group only partly full), ReLU, with
#: momentum in the training configuration: the inference build must leave G and M out.
TRAINING: Config = parse_config({
    "name": "inference-only",
    "network": {"layers": [16, 7, 5], "activation": "relu"},
    "rule": {"name": "mgd-weight", "batch": 4, "optimizer": "momentum"},
    "hardware": {"lanes": 3, "sample_depth": 32},
})


def _inference(cfg: Config) -> Config:
    return parse_config({**cfg.model_dump(mode="json"),
                         "hardware": {**cfg.hardware.model_dump(mode="json"), "training": False}})


INFERENCE = _inference(TRAINING)
#: Target projection (hard sigmoid): its forward engine draws B and gates errors on the
#: baseline passes of a training build; inference must ignore all of it.
DRTP_INFERENCE = _inference(parse_config({
    "name": "inference-only-drtp",
    "network": {"layers": [16, 7, 5], "activation": "hard-sigmoid"},
    "rule": {"name": "drtp", "batch": 4},
    "hardware": {"lanes": 2, "sample_depth": 16},
}))


def test_inference_build_leaves_training_out() -> None:
    """The registers only training reads are absent (from REGISTERS' ``present``); the
    configuration hash tells the two builds apart; the elaborated design has no loss,
    correlation or update unit and no G, momentum or sign memory."""
    from amaranth.back import rtlil

    absent = absent_registers(INFERENCE)
    assert {Reg.STEPS, Reg.STEP, Reg.SEED, Reg.LR_MULT, Reg.DELTA, Reg.COPIES, Reg.STEP_SAMPLES,
            Reg.SAMPLE_COUNT, Reg.SAMPLE_CURSOR, Reg.STEPS_DONE, Reg.LAST_LOSS} <= absent
    kept = {info.name for info in register_map(INFERENCE)}
    assert {"ID", "CONFIG_HASH", "STATUS", "COMMAND", "INFER_COUNT", "CYCLES_LO", "MAC_BUSY_LO"} <= kept
    assert not absent_registers(TRAINING) & {Reg.STEPS, Reg.SEED, Reg.LAST_LOSS}
    assert config_hash(INFERENCE) != config_hash(TRAINING)
    text = rtlil.convert(Accelerator(INFERENCE), name="top")
    trained = rtlil.convert(Accelerator(TRAINING), name="top")
    for unit in ("loss", "frontend", "corr", "update", "grads", "momentum", "signs"):
        assert f"cell \\top.{unit} " in trained, unit
        assert f"cell \\top.{unit} " not in text, unit
    for unit in ("engine", "writer", "seq", "regs", "weights", "samples", "outputs"):
        assert f"cell \\top.{unit} " in text, unit


@pytest.fixture(scope="module")
def hw():
    from perturbo.sim.backend import VerilatorBackend

    backend = VerilatorBackend(INFERENCE, weights=init_weights(INFERENCE))
    yield backend
    backend.close()


def _check_inference(backend, cfg: Config) -> None:
    """INFER on random weights (full INT16 range, as a trained model may have) and random
    samples: every output score equals the golden model's, over more samples than the buffer
    holds (several INFER runs)."""
    torch.manual_seed(5)
    gold = IntegerModel(cfg)
    for trial in range(3):
        weights = [torch.randint(-2**15, 2**15, (lay.n_out, lay.cols), dtype=torch.int64)
                   for lay in backend.geo.layers] if trial else init_weights(cfg)
        state = {**gold.state_dict(), "weights": weights}
        gold.load_state_dict(state)
        backend.load_state_dict(state)
        x = torch.randint(-128, 128, (45, 16), dtype=torch.int64)
        expected = gold.predict(x)
        got = backend.predict(x)
        assert torch.equal(got, expected), (trial, (got != expected).nonzero()[:5])


def test_inference_only_matches_the_golden_model(hw) -> None:
    _check_inference(hw, INFERENCE)


def test_drtp_inference_only_matches_the_golden_model() -> None:
    from perturbo.sim.backend import VerilatorBackend

    backend = VerilatorBackend(DRTP_INFERENCE)
    try:
        _check_inference(backend, DRTP_INFERENCE)
    finally:
        backend.close()


def test_inference_only_refuses_training(hw) -> None:
    """The driver refuses TRAIN with a message naming the option; the bus refuses the TRAIN
    command, the G space and the training registers (``err``)."""
    from perturbo.host.accelerator import AcceleratorError
    from perturbo.host.link import LinkError

    x = torch.zeros(4, 16, dtype=torch.int64)
    with pytest.raises(AcceleratorError, match=r"inference-only \(hardware.training: false\)"):
        hw.train_steps(x, torch.zeros(4, dtype=torch.int64), 1)
    with pytest.raises(AcceleratorError, match="inference-only"):
        hw.lr_mult = 3
    for space, address in ((Space.REGS, Reg.STEPS), (Space.REGS, Reg.SEED), (Space.GRADS, 0),
                           (Space.MOMENTUM, 0)):
        with pytest.raises(LinkError):
            hw.link.read_word(space, address)
    with pytest.raises(LinkError):
        hw.link.write_word(Space.REGS, Reg.COMMAND, int(Command.TRAIN))
    # the accelerator is still usable
    assert hw.link.read_word(Space.REGS, Reg.STATUS) & 1 == 0
    gold = IntegerModel(INFERENCE)
    gold.load_state_dict({**gold.state_dict(), "weights": hw.state_dict()["weights"]})
    x = torch.randint(-128, 128, (5, 16), dtype=torch.int64)
    assert torch.equal(hw.predict(x), gold.predict(x))
