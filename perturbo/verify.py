"""``perturbo verify``: a device against the golden model, step by step.

:func:`identity_differences` reads the registers that say what a device is (``ID``,
``CONFIG_HASH``, ``LANES``, ``ROWS``, ``SAMPLE_DEPTH``); :func:`register_differences` reads
back the configuration registers (:func:`~perturbo.hdl.registers.config_values`) after the
host wrote them.  :class:`SideBySide` then trains the device and the golden
:class:`~perturbo.golden.integer.IntegerModel` from the same state on the same samples, reads
the device's weights, momentum and step counter back every few steps and returns the
first :class:`Difference`, named by step, rule, layer, neuron and input.

The same comparison serves the tests (``tests/test_verilator_backend.py``, the cocotb
testbenches through :func:`first_difference`): one place says what "equal to golden" means.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

from perturbo.config import Config
from perturbo.data import SampleStream, Splits, load_dataset
from perturbo.golden.integer import IntegerModel

__all__ = ["Difference", "Report", "SideBySide", "first_difference", "identity_differences",
           "matrix_difference", "register_differences", "verify"]


@dataclass(frozen=True)
class Difference:
    """One value on which a device and the golden model disagree.

    Attributes
    ----------
    what : str
        What differs: ``"weights"``, ``"momentum"``, ``"step counter"``, ``"loss"``,
        ``"inference scores"``, ``"register LANES"``...
    device, golden : int or float
        The device's value and the golden model's.
    step : int, optional
        The training step after which it was read (None: before training).
    layer, neuron, col : int, optional
        Where in the per-layer matrices (``col`` is the input, or the class or sample).
    rule : str, optional
        The layer's learning rule.
    cols_name : str
        What ``col`` counts (``"input"``; ``"class"`` for scores).
    count : int
        How many elements of that layer (or matrix) differ.
    note : str
        Anything more (an earlier loss that already differed).
    """

    what: str
    device: int | float
    golden: int | float
    step: int | None = None
    layer: int | None = None
    neuron: int | None = None
    col: int | None = None
    rule: str | None = None
    cols_name: str = "input"
    count: int = 1
    note: str = ""

    def __str__(self) -> str:
        text = f"step {self.step}: " if self.step is not None else ""
        text += f"{self.what} differ"
        if self.layer is not None:
            rule = f" ({self.rule})" if self.rule else ""
            text += f": layer {self.layer}{rule} neuron {self.neuron} {self.cols_name} {self.col}"
        text += f": device {_show(self.device)} golden {_show(self.golden)}"
        if self.layer is not None:
            text += f" ({self.count} differ in this layer)"
        return text + (f"; {self.note}" if self.note else "")


def _show(value: int | float) -> str:
    return f"{value:#010x}" if isinstance(value, int) and value > 0xFFFF else str(value)


def matrix_difference(what: str, device: Sequence[torch.Tensor], golden: Sequence[torch.Tensor], *,
                      rules: Sequence[str] | None = None, cols_name: str = "input",
                      step: int | None = None) -> Difference | None:
    """The first differing element of per-layer matrices (layer, then row-major), or None."""
    for layer, (a, b) in enumerate(zip(device, golden, strict=True)):
        diff = (a != b).nonzero()
        if len(diff):
            i, j = (int(v) for v in diff[0])
            return Difference(what, int(a[i, j]), int(b[i, j]), step=step, layer=layer, neuron=i, col=j,
                              rule=rules[layer] if rules else None, cols_name=cols_name, count=len(diff))
    return None


def first_difference(what: str, rtl: Sequence[torch.Tensor], gold: Sequence[torch.Tensor],
                     cols_name: str = "input") -> str | None:
    """:func:`matrix_difference` as an assertion message (None when equal)."""
    diff = matrix_difference(what, rtl, gold, cols_name=cols_name)
    return None if diff is None else str(diff)


def identity_differences(cfg: Config, link: object) -> list[Difference]:
    """``ID``, ``CONFIG_HASH``, ``LANES``, ``ROWS`` and ``SAMPLE_DEPTH`` against ``cfg``
    (reads only; a wrong ``ID`` ends the check, the rest would be noise)."""
    from perturbo.hdl.bus import ACCEL_ID, Reg, Space
    from perturbo.hdl.geometry import Geometry, config_hash

    geo = Geometry(cfg)
    expected = {Reg.ID: ACCEL_ID, Reg.CONFIG_HASH: config_hash(cfg), Reg.LANES: geo.lanes,
                Reg.ROWS: geo.rows, Reg.SAMPLE_DEPTH: geo.sample_depth}
    out = []
    for reg, value in expected.items():
        found = link.read_word(Space.REGS, reg)
        if found != value:
            out.append(Difference(f"register {reg.name}", found, value))
            if reg == Reg.ID:
                break
    return out


def register_differences(cfg: Config, link: object) -> list[Difference]:
    """The configuration registers read back against :func:`config_values` (after the host
    wrote them: a register that refused its value, or a decoder that drops bits, shows)."""
    from perturbo.hdl.bus import Space
    from perturbo.hdl.registers import config_values

    out = []
    for reg, value in config_values(cfg).items():
        found = link.read_word(Space.REGS, reg)
        if found != value & 0xFFFF_FFFF:
            out.append(Difference(f"register {reg.name}", found, value))
    return out


class SideBySide:
    """A device and the golden model trained together from the golden model's initial state.

    Parameters
    ----------
    cfg : Config
        The configuration of both.
    hw : AcceleratorBackend
        The device (its state is overwritten with the golden model's).
    splits : Splits, optional
        ``cfg``'s data (loaded when not given).

    Attributes
    ----------
    gold : IntegerModel
        The golden model.
    """

    def __init__(self, cfg: Config, hw: object, *, splits: Splits | None = None) -> None:
        self.cfg = cfg
        self.hw = hw
        self.gold = IntegerModel(cfg)
        hw.load_state_dict(self.gold.state_dict())
        self.splits = splits if splits is not None else load_dataset(cfg)
        self.stream = SampleStream(self.splits.train.x, self.splits.train.y, cfg.seed)
        self.samples = cfg.rule.samples_per_step
        self.rules = [r.value for r in cfg.layer_rules()]

    @property
    def step(self) -> int:
        """Steps both have run."""
        return self.gold.step

    def advance(self, steps: int) -> Difference | None:
        """Run ``steps`` steps on both, then compare every step's loss and the state read back."""
        n = self.samples
        x, y = self.stream.take(steps * n)
        first = self.gold.step + 1
        device = self.hw.train_steps(x, y, steps)
        golden = [self.gold.train_step(x[k * n:(k + 1) * n], y[k * n:(k + 1) * n]) for k in range(steps)]
        loss = next((Difference("loss", a, b, step=first + k)
                     for k, (a, b) in enumerate(zip(device, golden, strict=True)) if a != b), None)
        state = self.compare_state()
        if state is None or loss is None:
            return state or loss
        # the located state difference is the more useful report; an earlier loss tells when
        return replace(state, note=f"the loss already differed at step {loss.step}: "
                                   f"device {loss.device} golden {loss.golden}")

    def compare_state(self) -> Difference | None:
        """The device's weights, momentum and step counter against the golden model's."""
        state = self.hw.state_dict()
        step = self.gold.step
        diff = matrix_difference("weights", state["weights"], self.gold.weights, rules=self.rules, step=step)
        if diff is None and self.gold.momentum is not None and state.get("momentum") is not None:
            diff = matrix_difference("momentum", state["momentum"], self.gold.momentum, rules=self.rules,
                                     step=step)
        if diff is None and int(state["step"]) != step:
            diff = Difference("step counter", int(state["step"]), step, step=step)
        return diff

    def compare_inference(self, x: torch.Tensor | None = None) -> Difference | None:
        """The output scores of both on ``x`` (default: the validation split)."""
        x = self.splits.val.x if x is None else x
        device, golden = self.hw.predict(x), self.gold.predict(x)
        return matrix_difference("inference scores", [device], [golden], cols_name="class",
                                 step=self.gold.step)


@dataclass
class Report:
    """What :func:`verify` checked, and the first difference if any.

    Attributes
    ----------
    checked : list of str
        One line per check that passed.
    difference : Difference or None
        The first difference (None: the device agrees with the golden model).
    steps : int
        Training steps run on both.
    """

    checked: list[str] = field(default_factory=list)
    difference: Difference | None = None
    steps: int = 0

    @property
    def passed(self) -> bool:
        return self.difference is None


def verify(cfg: Config, hw: object, *, steps: int, every: int = 1,
           progress: object | None = None) -> Report:
    """Registers, then ``steps`` training steps compared every ``every`` steps, then inference.

    ``hw`` is an :class:`~perturbo.sim.backend.AcceleratorBackend` (it wrote the
    configuration registers when it was built).  ``progress(line)`` is called with each
    passed check.  Stops at the first difference.
    """
    report = Report()

    def passed(line: str) -> None:
        report.checked.append(line)
        if progress is not None:
            progress(line)

    for check, name in ((identity_differences, "identity (ID, CONFIG_HASH, LANES, ROWS, SAMPLE_DEPTH)"),
                        (register_differences, "configuration registers read back")):
        found = check(cfg, hw.link)
        if found:
            report.difference = found[0]
            return report
        passed(name)
    run = SideBySide(cfg, hw)
    while run.step < steps:
        diff = run.advance(min(every, steps - run.step))
        report.steps = run.step
        if diff is not None:
            report.difference = diff
            return report
    what = "weights, momentum" if run.gold.momentum is not None else "weights"
    passed(f"{steps} training steps ({what}, step counter every {every}, every loss)")
    report.difference = run.compare_inference()
    if report.difference is None:
        passed(f"inference on {len(run.splits.val.x)} validation samples")
    return report
