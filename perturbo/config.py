"""The one YAML file: network, learning rule, numerics and hardware budget.

Every section is a strict pydantic model (unknown keys are refused); the same
resolved :class:`Config` drives the golden model, the RTL generator and the host
driver. ``perturbo config show FILE`` prints it with every default filled in.
"""

from __future__ import annotations

import difflib
import math
import reprlib
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

#: Largest configuration file read (bytes): a configuration is a few hundred bytes.
MAX_CONFIG_BYTES = 1 << 20
#: Most synapses (weights and biases) a network may have: the golden model keeps several
#: int64 copies of them on the host (4 M synapses: 32 MB per copy), and the largest FPGA
#: target holds far fewer (perturbo.limits).
MAX_SYNAPSES = 1 << 22


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the key and what is allowed."""


class Rule(StrEnum):
    """``rule.name`` (and ``rule.per_layer``): the learning rule (docs/numerics.md)."""

    ALR = "alr"
    MGD_WEIGHT = "mgd-weight"
    MGD_NODE = "mgd-node"
    DRTP = "drtp"
    TPSGD_L1 = "tpsgd-l1"
    TPSGD_L2 = "tpsgd-l2"
    BP = "bp"


#: Bits of the weights the MAC lanes multiply: a master weight's top ones, ``w8``, not
#: rounded (docs/numerics.md).
MAC_WEIGHT_BITS = 8

#: Largest ``rule.tau_theta * rule.batch``: the samples of one step that the sequencer counts.
STEP_SAMPLES_MAX = 1 << 24
#: Largest ``rule.copies``.
COPIES_MAX = 256

#: Rules whose layers share one loss difference ΔC and may be mixed per layer (hybrids).
PERTURBATIVE_RULES = (Rule.ALR, Rule.MGD_WEIGHT, Rule.MGD_NODE)
TARGET_PROJECTION_RULES = (Rule.DRTP, Rule.TPSGD_L1, Rule.TPSGD_L2)


class Activation(StrEnum):
    """``network.activation``: the hidden layers' activation (the output layer is linear)."""

    RELU = "relu"
    LEAKY_RELU = "leaky-relu"
    HARD_SIGMOID = "hard-sigmoid"


class Rounding(StrEnum):
    """``numerics.rounding``: how a right shift rounds."""

    #: add 2^(s-1) then shift right arithmetically: ties go towards +infinity
    HALF_UP = "half-up"
    #: plain arithmetic shift right: towards -infinity
    FLOOR = "floor"


class Overflow(StrEnum):
    """``numerics.overflow``: what a value that does not fit its narrower type becomes."""

    #: clamp to the narrower type's range
    SATURATE = "saturate"
    #: keep the low bits (two's complement wrap-around)
    WRAP = "wrap"


class Optimizer(StrEnum):
    """``rule.optimizer``: plain SGD, or momentum kept in its own memory."""

    SGD = "sgd"
    MOMENTUM = "momentum"


class Dataset(StrEnum):
    """``data.dataset``: the data sets that ship in packages (nothing is downloaded)."""

    DIGITS = "digits"
    FASHION_MNIST = "fashion-mnist"


class InputFormat(StrEnum):
    #: the quantised pixel, 0..127 (docs/numerics.md section 2)
    UNSIGNED = "unsigned"
    #: the quantised pixel minus its feature's mean over the training split, rounded: -127..127
    CENTRED = "centred"


class Backend(StrEnum):
    """Where ``perturbo train --backend`` trains: the golden model, the co-simulation, a board."""

    GOLDEN = "golden"
    VERILATOR = "verilator"
    SERIAL = "serial"


def _holds_bool(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return any(_holds_bool(v) for v in value)
    return isinstance(value, bool)


class _Strict(BaseModel):
    # allow_inf_nan=False: .inf and .nan are refused wherever a number is expected
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans(cls, value: Any, info: ValidationInfo) -> Any:
        """YAML's true/false would otherwise be read as the numbers 1 and 0 (``lanes: true``)."""
        if _holds_bool(value) and info.field_name is not None:
            annotation = cls.model_fields[info.field_name].annotation
            if bool not in get_args(annotation) and annotation is not bool:
                raise ValueError("true/false is not a valid value here; write a number")
        return value


class DataConfig(_Strict):
    """Which data set, and how it is split (deterministically, from ``split_seed``, else ``seed``)."""

    dataset: Dataset = Field(Dataset.DIGITS, description="digits (sklearn) or fashion-mnist (Debian IDX files)")
    validation_fraction: float = Field(
        0.1, gt=0.0, lt=0.5, description="share of the training data held out for model selection"
    )
    test_fraction: float = Field(
        0.2, gt=0.0, lt=0.5, description="share held out as the test split (digits; Fashion-MNIST has its own test set)"
    )
    train_limit: int | None = Field(None, gt=0, description="use at most this many training samples (quick runs)")
    split_seed: int | None = Field(
        None,
        ge=0,
        lt=2**32,
        description="seed of the train/validation/test split (and of which samples train_limit keeps); "
        "default: the top-level seed. Fix it to compare several training seeds on one test set",
    )
    pool: int = Field(
        1,
        ge=1,
        le=7,
        description="Fashion-MNIST only: average-pool k x k pixel blocks (2: 28x28 -> 14x14 = 196 inputs)",
    )

    inputs: InputFormat = Field(
        InputFormat.UNSIGNED,
        description="unsigned: the quantised pixel x, 0..127; centred: x - m_j, m_j the rounded mean of "
        "feature j over the training split (-127..127; host-side, docs/numerics.md section 7)",
    )

    @model_validator(mode="after")
    def _pool_divides(self) -> DataConfig:
        if self.pool != 1 and (self.dataset != Dataset.FASHION_MNIST or 28 % self.pool):
            raise ValueError(
                f"data.pool = {self.pool}: pooling applies to fashion-mnist only, with 28 % pool == 0 (1, 2, 4, 7)"
            )
        return self


class NetworkConfig(_Strict):
    """An MLP: ``layers`` are the widths from the input to the output."""

    layers: list[Annotated[int, Field(gt=0, le=4096)]] = Field([64, 32, 10], min_length=2)
    activation: Activation = Field(Activation.RELU, description="hidden-layer activation; the output layer is linear")
    shifts: list[Annotated[int, Field(ge=0, le=24)]] | None = Field(
        None, description="requantisation shift per layer (accumulator -> INT8); default 7 for every layer"
    )
    init_scale: float = Field(
        0.5, gt=0.0, description="multiplies the He-normal initial weights (0.5 suits the 0..1 inputs, measured)"
    )

    @model_validator(mode="after")
    def _shifts_match(self) -> NetworkConfig:
        if self.shifts is not None and len(self.shifts) != len(self.layers) - 1:
            raise ValueError(
                f"network.shifts has {len(self.shifts)} entries but the network has "
                f"{len(self.layers) - 1} layers; give one shift per layer"
            )
        return self

    @property
    def n_layers(self) -> int:
        return len(self.layers) - 1

    @property
    def layer_shifts(self) -> list[int]:
        return list(self.shifts) if self.shifts is not None else [7] * self.n_layers


class RuleConfig(_Strict):
    """The learning rule and its hyperparameters, in the units the hardware applies them."""

    name: Rule = Field(Rule.MGD_WEIGHT, description="alr | mgd-weight | mgd-node | drtp | tpsgd-l1 | tpsgd-l2 | bp")
    per_layer: list[Rule] | None = Field(
        None, description="hybrid: one rule per layer, all from alr / mgd-weight / mgd-node"
    )
    delta: int = Field(1, ge=1, le=127, description="MGD weight perturbation amplitude, in INT8 weight LSBs")
    node_delta: int = Field(128, ge=1, le=2**20, description="MGD node perturbation amplitude, in accumulator LSBs")
    sigma: int = Field(16, ge=1, le=4095, description="ALR noise scale: accumulator LSBs per unit of the integer noise")
    copies: int = Field(
        1, ge=1, le=COPIES_MAX,
        description="perturbed passes per sample (ALR noisy copies); an even count is antithetic pairs",
    )
    tau_theta: int = Field(1, ge=1, le=65536, description="windows of `batch` samples integrated per update")
    batch: int = Field(8, ge=1, le=4096, description="samples per window; every sample gets `copies` perturbations")
    lr_mult: int = Field(1, ge=1, le=255, description="learning rate numerator: update = G * lr_mult >> lr_shift")
    lr_shift: Annotated[int, Field(ge=0, le=40)] | list[Annotated[int, Field(ge=0, le=40)]] = Field(
        12, description="learning rate shift, one for all layers or one per layer"
    )
    optimizer: Optimizer = Field(Optimizer.SGD, description="sgd | momentum (integer, on chip)")
    momentum_shift: int = Field(3, ge=1, le=16, description="momentum: m -= m >> momentum_shift; m += G")
    target_on: int = Field(96, ge=1, le=127, description="one-hot target value of the label's output (INT8)")
    dead_zone: int = Field(
        0, ge=0, le=255,
        description="tpsgd-l1: a hidden neuron's error sign(y - t) is 0 when |y - t| <= dead_zone "
        "(INT8 activation units; 0: the plain sign); generated into the accelerator",
    )
    float_lr: float = Field(0.003, gt=0.0, description="Adam learning rate of the float references (bp and friends)")

    @property
    def samples_per_step(self) -> int:
        """Samples one update consumes: ``tau_theta`` windows of ``batch`` samples
        (docs/numerics.md)."""
        return self.tau_theta * self.batch

    @model_validator(mode="after")
    def _check_step_samples(self) -> RuleConfig:
        if self.samples_per_step > STEP_SAMPLES_MAX:
            raise ValueError(
                f"rule.tau_theta * rule.batch = {self.samples_per_step}: a step may take at most "
                f"{STEP_SAMPLES_MAX} samples (2^24); lower rule.tau_theta or rule.batch"
            )
        return self

    @model_validator(mode="after")
    def _check_dead_zone(self) -> RuleConfig:
        if self.dead_zone and self.name is not Rule.TPSGD_L1:
            raise ValueError(
                f"rule.dead_zone = {self.dead_zone} applies to the hidden-layer sign error of tpsgd-l1 "
                f"only; rule.name is {self.name.value}: remove rule.dead_zone or set it to 0"
            )
        return self

    @model_validator(mode="after")
    def _check_hybrid(self) -> RuleConfig:
        if self.per_layer is not None:
            bad = [r.value for r in self.per_layer if r not in PERTURBATIVE_RULES]
            if bad:
                raise ValueError(
                    f"rule.per_layer may only mix {', '.join(r.value for r in PERTURBATIVE_RULES)}; got {bad}"
                )
        return self


class TrainingConfig(_Strict):
    steps: int = Field(2000, ge=1, description="updates to train for")
    eval_every: int = Field(500, ge=1, description="evaluate on the validation split every this many steps")
    checkpoint_seconds: float = Field(
        60.0, ge=0.0, description="also checkpoint when this many seconds have passed since the last "
        "checkpoint (besides every eval_every steps); 0: only every eval_every steps",
    )
    lr_mult_schedule: list[tuple[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=1, le=255)]]] = Field(
        [],
        description="step decay of the integer rules: [[step, lr_mult], ...]; from each step on, the host "
        "writes that LR_MULT (rule.lr_mult applies before the first entry); the float references, which "
        "have no LR_MULT, train at rule.float_lr without it",
    )

    @model_validator(mode="after")
    def _schedule_sorted(self) -> TrainingConfig:
        steps = [s for s, _ in self.lr_mult_schedule]
        if steps != sorted(set(steps)):
            raise ValueError(f"training.lr_mult_schedule steps must increase strictly, got {steps}")
        return self


class NumericsConfig(_Strict):
    """Integer formats; see docs/numerics.md for where each applies."""

    weight_bits: int = Field(
        16, ge=MAC_WEIGHT_BITS, le=32,
        description="master weights kept by the update unit; the MACs read the top 8 bits"
    )
    acc_bits: int = Field(32, ge=16, le=48, description="forward accumulator width")
    grad_bits: int = Field(32, ge=16, le=48, description="per-synapse correlation accumulator (G) width")
    rounding: Rounding = Field(Rounding.HALF_UP, description="half-up | floor, for every right shift that rounds")
    overflow: Overflow = Field(Overflow.SATURATE, description="saturate | wrap, at every narrowing step")


class HardwareConfig(_Strict):
    lanes: int = Field(8, ge=1, le=128, description="parallel INT8 multiply-accumulate lanes")
    weight_depth: int | None = Field(
        None, gt=0, description="weight memory words per lane; default: what the network needs"
    )
    sample_depth: int = Field(1024, ge=1, le=1 << 16, description="on-chip sample buffer, in samples")
    streaming: bool = Field(
        True,
        description="the loss record (every step's loss, space LOSSES) and refill while training "
        "(TRAIN_STREAM, docs/protocol.md): two block RAMs and some logic, which the iCEBreaker "
        "builds have no room for",
    )
    overlap_update: bool = Field(
        True,
        description="start a run's next step while the update writes the weights: its first pass "
        "reads each weight row after the update has written it (hdl/sequencer.py), which takes a "
        "second read port on the weight memories (a second copy in block RAM); about one walk "
        "of the weight rows per step saved",
    )
    placement_seed: int = Field(
        1,
        ge=0,
        description="nextpnr's placement seed for the board builds (perturbo synth --seed overrides "
        "it): the placement, and with it the Fmax, of one netlist moves by 5 to 15 % from seed to "
        "seed (docs/boards.md), so a configuration names the seed of the bitstream it ships",
    )
    placement_timing_weight: int | None = Field(
        None,
        ge=1,
        le=1000,
        description="the weight nextpnr's heap placer gives timing against wirelength "
        "(--placer-heap-timingweight; default: nextpnr's, 10): like the seed, a per-build choice "
        "(the 8-lane digits example on the ULX3S-85F at session 34's RTL: 106.5, 104.0 and 106.5 MHz "
        "at seeds 1 to 3 with 30, 100.1, 104.9 and 96.9 with the default; at session 35's, 94.9, 103.9 "
        "and 99.0 against 102.8, 103.3 and 98.3; docs/boards.md). "
        "Builds placed by the static placer refuse it",
    )
    clock_mhz: float | None = Field(
        None,
        gt=0.0,
        description="clock a board build runs the accelerator at, made by the board's PLL when it "
        "differs from the oscillator (only frequencies the PLL can make; docs/boards.md, 'Clock'); "
        "default: the board's oscillator. The UART divisor and nextpnr's constraint follow it",
    )
    hash_stages_per_register: Literal[1, 2, 3, 6] = Field(
        2,
        description="stages of the six-stage mix32 hash between two pipeline registers: 6 (one "
        "register per hash) saves an iCE40UP5K about 270 logic cells against 2 and builds at about "
        "16 MHz there, 3 (two registers) about 20 MHz for about 90 more; 2 keeps the hash off the "
        "critical path above 50 MHz on ECP5",
    )
    lane_products: Literal["dsp", "logic"] = Field(
        "dsp",
        description="where each lane's INT8 x INT8 product is made: the FPGA's block multipliers "
        "(dsp), or adders in logic (logic: about 170 LUT4 a lane on ECP5, the same values), for lane "
        "counts whose products and the update's do not all fit the multipliers (the ULX3S-85F at "
        "64 lanes: docs/boards.md)",
    )
    update_products: Literal["dsp", "dsp-low"] = Field(
        "dsp",
        description="where the update's products U x lr_mult are made: a block multiplier for each "
        "17-bit slice of U (dsp: two a lane with the default 16-bit weights and 32-bit G), or the low "
        "slice on a block multiplier and the rest in logic (dsp-low: one multiplier a lane and about "
        "150 LUT4 more, the same values), for lane counts whose lane and update multipliers do not all "
        "fit the device (the ULX3S-85F at 64 lanes: docs/boards.md)",
    )
    update_lanes: int | None = Field(
        None,
        ge=1,
        description="weights the update unit writes a cycle: a divisor of lanes, each weight row then "
        "taking lanes / update_lanes cycles (the step's last correlation walk slowed to match, so "
        "(lanes / update_lanes - 1) x (rows + 1) cycles more a step, the same values); fewer update "
        "multipliers and less logic, for lane counts that do not fit or route (the digits network on "
        "the ULX3S-85F at 32 lanes with 16: 32 multipliers, 2 020 LUT4 and 3 432 FF fewer; "
        "docs/boards.md, 'An update narrower than the lanes'); default: lanes",
    )
    register_grads: bool = Field(
        False,
        description="register the G memory's block-RAM output before the correlation and the "
        "update use it, the update's multiplier inputs before the block multipliers, and its step "
        "narrowed a stage before the subtraction: a cycle more in the correlation's pipe and one "
        "or two in the update's (3 a step for a 32-bit G), for the ECP5's Fmax, where G's block "
        "RAMs and the multipliers sit across the chip from the logic that uses them "
        "(docs/boards.md); needs a pipelined host bus (not the iCEBreaker's); off, a build saves "
        "the flip-flops",
    )
    split_inputs: bool = Field(
        True,
        description="where an mgd-weight layer has at most half as many neurons as there are lanes, "
        "give each neuron several lanes, each on its own inputs, summed on the bias token: fewer "
        "weight rows a pass (the digits network at 32 lanes: 82 rows, not 98); false: one neuron "
        "a lane, the lanes past the layer's neurons idle (docs/boards.md, 'Lanes that split the "
        "inputs')",
    )
    counter_bits: Literal[32, 48, 64] = Field(
        48,
        description="width of the CYCLES and MAC_BUSY counters: 48 wraps after 65 days at 50 MHz; "
        "32 (no CYCLES_HI, MAC_BUSY_HI) after 358 s at 12 MHz, which is long enough to measure a "
        "run and saves an iCE40UP5K about 140 logic cells",
    )
    baud: int = Field(115200, gt=0)
    training: bool = Field(
        True,
        description="generate the training accelerator; false: inference only (the forward engine, "
        "output writer, registers and host link without the perturbation sources, loss, correlation, "
        "update, G and momentum memories), which refuses TRAIN: the cost of learning in docs/boards.md",
    )

    @model_validator(mode="after")
    def _update_lanes_divide(self) -> HardwareConfig:
        if self.update_lanes is not None and self.lanes % self.update_lanes:
            divisors = [d for d in range(1, self.lanes + 1) if self.lanes % d == 0]
            raise ValueError(
                f"hardware.update_lanes = {self.update_lanes} does not divide hardware.lanes = "
                f"{self.lanes}: give one of {', '.join(map(str, divisors))}"
            )
        return self

    @property
    def update_width(self) -> int:
        """The weights the update unit writes a cycle (``update_lanes``, default ``lanes``)."""
        return self.update_lanes or self.lanes

    @property
    def grads_registered(self) -> bool:
        """``register_grads`` where it has an effect: a training build (an inference-only one
        has no G memory)."""
        return self.register_grads and self.training


class Config(_Strict):
    """A whole perturbo configuration (one YAML file)."""

    name: str = "perturbo"
    seed: int = Field(
        1,
        ge=0,
        lt=2**32,
        description="drives initial weights, shuffles and the on-chip random sources; also the data split "
        "unless data.split_seed is set",
    )
    data: DataConfig = DataConfig()
    network: NetworkConfig = NetworkConfig()
    rule: RuleConfig = RuleConfig()
    training: TrainingConfig = TrainingConfig()
    numerics: NumericsConfig = NumericsConfig()
    hardware: HardwareConfig = HardwareConfig()

    @model_validator(mode="after")
    def _check_widths(self) -> Config:
        net, num, rule = self.network, self.numerics, self.rule
        if isinstance(rule.lr_shift, list) and len(rule.lr_shift) != net.n_layers:
            raise ValueError(
                f"rule.lr_shift has {len(rule.lr_shift)} entries but the network has {net.n_layers} layers"
            )
        if rule.per_layer is not None and len(rule.per_layer) != net.n_layers:
            raise ValueError(
                f"rule.per_layer has {len(rule.per_layer)} entries but the network has {net.n_layers} layers"
            )
        # The forward accumulator must hold the largest dot product: every term is at
        # most 128*128 = 2^14 in magnitude, plus the bias input, without overflow.
        for n_in in net.layers[:-1]:
            need = 15 + math.ceil(math.log2(n_in + 1)) + 1
            if num.acc_bits < need:
                raise ValueError(
                    f"numerics.acc_bits = {num.acc_bits} is too narrow for a layer with {n_in} inputs: "
                    f"the dot product needs at least {need} bits"
                )
        if num.grad_bits < 16:
            raise ValueError("numerics.grad_bits must be at least 16")
        synapses = sum(o * i for o, i in self.layer_shapes())
        if synapses > MAX_SYNAPSES:
            raise ValueError(
                f"network.layers = {_short_repr(net.layers)} has {synapses} weights and biases; at most "
                f"{MAX_SYNAPSES} are allowed (the host's golden model keeps several copies of them)"
            )
        return self

    # -- derived quantities shared by golden/ and hdl/ ------------------------------

    @property
    def split_seed(self) -> int:
        """The seed of the data split: ``data.split_seed``, or ``seed`` when that is not set."""
        return self.seed if self.data.split_seed is None else self.data.split_seed

    def layer_rules(self) -> list[Rule]:
        """The rule each layer learns with."""
        if self.rule.per_layer is not None:
            return list(self.rule.per_layer)
        return [self.rule.name] * self.network.n_layers

    def layer_lr_shifts(self) -> list[int]:
        """The learning-rate shift of every layer."""
        s = self.rule.lr_shift
        return list(s) if isinstance(s, list) else [s] * self.network.n_layers

    def layer_shapes(self) -> list[tuple[int, int]]:
        """(outputs, inputs + 1) of every layer's master weight matrix; the last column is the bias."""
        lay = self.network.layers
        return [(lay[i + 1], lay[i] + 1) for i in range(len(lay) - 1)]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _section_of(loc: tuple[int | str, ...]) -> tuple[type[BaseModel] | None, str]:
    """The model class and dotted name of the section that holds the key at ``loc``."""

    def model_in(annotation: Any) -> type[BaseModel] | None:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return annotation
        for arg in get_args(annotation):  # Optional[...], list[...], Annotated[...]
            found = model_in(arg)
            if found is not None:
                return found
        return None

    model: type[BaseModel] | None = Config
    names: list[str] = []
    for part in loc[:-1]:
        if isinstance(part, int):  # an index into a list of sections
            names[-1:] = [f"{names[-1]}[{part}]"] if names else [f"[{part}]"]
            continue
        field = model.model_fields.get(part) if model is not None else None
        model = model_in(field.annotation) if field is not None else None
        names.append(part)
    return model, ".".join(names)


def _format_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for e in err.errors():
        loc = tuple(e["loc"])
        key = ".".join(str(p) for p in loc) or "(top level)"
        value = e.get("input")
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            model, section = _section_of(loc)
            if model is None:
                msg = "unknown key (not one of the allowed keys of this section)"
            else:
                allowed = list(model.model_fields)
                where = f"allowed keys in {section}" if section else "allowed top-level keys"
                msg = f"unknown key; {where}: {', '.join(allowed)}"
                close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
                if close:
                    msg += f" (did you mean {close[0]!r}?)"
        elif e["type"] == "enum":
            msg = f"must be one of {e.get('ctx', {}).get('expected', '')}"
        elif e["type"] == "value_error":
            # A cross-field check: its message already names the keys involved.
            msg = msg.removeprefix("Value error, ")
            if isinstance(value, dict):
                lines.append(f"  {msg}" if not loc else f"  {key}: {msg}")
                continue
        shown = _short_repr(value)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        lines.append(f"  {key} = {shown}: {msg}")
    return "\n".join(lines)


_REPR = reprlib.Repr()  # keyword arguments need Python 3.12
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 2, 4, 4, 60, 60


def _short_repr(value: Any) -> str:
    """A value for an error message, without building the text of a huge one."""
    return _REPR.repr(value)


class _NoAliasLoader(yaml.SafeLoader):
    """safe_load without aliases: ``*name`` could expand a short file into gigabytes."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases (*name) are not allowed in a perturbo file; "
                "write the value out", mark)
        return super().compose_node(parent, index)


def parse_config(data: Any, source: str = "<config>") -> Config:
    """Validate a mapping as a :class:`Config`; raise :class:`ConfigError` with readable messages."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"invalid configuration in {source}: the top level must be a mapping, not {type(data).__name__}"
        )
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(err, source)) from None


def read_yaml(path: str | Path, what: str = "configuration") -> Any:
    """The data of a perturbo YAML file (a configuration or a sweep), or :class:`ConfigError`
    with one line: the file unreadable, too large, not UTF-8, malformed or using aliases."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as err:
        raise ConfigError(f"cannot read {what} {path}: {err.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path} is larger than {MAX_CONFIG_BYTES} bytes; it is not a perturbo {what}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{path} is not UTF-8 text (byte {raw[err.start]:#04x} at offset {err.start}); "
            f"save the {what} as UTF-8"
        ) from None
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as err:
        raise ConfigError(f"malformed YAML in {path}: {_yaml_problem(err)}") from None


def _yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's error in one line: what is wrong and where (its own text quotes the line)."""
    if isinstance(err, yaml.MarkedYAMLError) and err.problem_mark is not None:
        mark = err.problem_mark
        return f"{err.problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(err).split())


def load_config(path: str | Path) -> Config:
    """Read and validate one YAML configuration file."""
    data = read_yaml(path)
    return parse_config(data, str(path))
