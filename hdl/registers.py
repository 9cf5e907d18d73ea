"""The register map, written once: the gateware decoder (:class:`RegisterFile`), the host's
configuration writes (:func:`config_values`) and the registers a build leaves out
(:func:`absent_registers`) are generated from :data:`REGISTERS`.

Each :class:`RegisterSpec` names a register's address, access, width, reset value and
write range, and the configuration key it comes from.  Where a register carries a
configuration value, its reset value is that value and its range is the range the
configuration allows (read from the pydantic field), so the bus and the configuration
cannot disagree.  :func:`register_map` resolves the specification for one configuration
(which registers exist, their ranges and resets); :class:`RegisterFile` is its decoder
(the accelerator's ``Space.REGS``).  The idea is amaranth-soc's ``csr.Builder`` and
LiteX's ``csr.csv``, without depending on either.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, IntEnum

import annotated_types
from amaranth.hdl import Const, Module, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from perturbo.config import STEP_SAMPLES_MAX, Config, Rule

from .arith import at_least, at_most

__all__ = [
    "ACCEL_ID", "Access", "RegisterSpec", "RegisterInfo", "REGISTERS", "Reg",
    "register_map", "absent_registers", "config_values", "RegisterFile",
    "constant_sources", "register_table",
]

#: Value of ``ID``: ASCII "PRTB" (perturbo), so a host can tell it found the accelerator.
ACCEL_ID = 0x5052_5442
_U32 = (0, 2**32 - 1)


class Access(Enum):
    """``RO`` refuses writes; ``RW`` refuses writes while busy or out of range; ``WO`` reads as an error."""

    RO = "ro"
    RW = "rw"
    WO = "wo"


# The docstrings of these functions are what the generated register table
# (:func:`register_table`) says about the values they compute.

def _always(cfg: Config) -> bool:
    """always"""
    return True


def _training(cfg: Config) -> bool:
    """training builds (`hardware.training`)"""
    return cfg.hardware.training


def _wide(cfg: Config) -> bool:
    """training builds with `numerics.grad_bits` > 32"""
    return cfg.hardware.training and cfg.numerics.grad_bits > 32


def _counter_bits(cfg: Config) -> int:
    """`hardware.counter_bits`"""
    return cfg.hardware.counter_bits


def _wide_counters(cfg: Config) -> bool:
    """`hardware.counter_bits` > 32"""
    return cfg.hardware.counter_bits > 32


def _has_rule(rule: Rule) -> Callable[[Config], bool]:
    def present(cfg: Config) -> bool:
        return cfg.hardware.training and rule in cfg.layer_rules()
    present.__doc__ = f"training builds in which a layer uses `{rule.value}`"
    return present


def _sample_depth(cfg: Config) -> int:
    return cfg.hardware.sample_depth


def _streaming(cfg: Config) -> bool:
    """training builds with `hardware.streaming`"""
    return cfg.hardware.streaming and cfg.hardware.training


def _depth_bits(cfg: Config) -> int:
    """bits of `hardware.sample_depth`"""
    return cfg.hardware.sample_depth.bit_length()


def _step_samples(cfg: Config) -> int:
    """`rule.tau_theta * rule.batch`"""
    return cfg.rule.samples_per_step


def _sample_count_bounds(cfg: Config) -> tuple[int, int]:
    """1 .. `sample_depth`"""
    return 1, _sample_depth(cfg)


def _cursor_bounds(cfg: Config) -> tuple[int, int]:
    """0 .. `sample_depth` − 1"""
    return 0, _sample_depth(cfg) - 1


def _infer_count_bounds(cfg: Config) -> tuple[int, int]:
    """0 .. `sample_depth`"""
    return 0, _sample_depth(cfg)


@dataclass(frozen=True)
class RegisterSpec:
    """One register (see the module docstring).

    ``config`` is the dotted configuration key the reset value comes from (its range then
    comes from the pydantic field unless ``bounds`` is given); ``reset`` computes a reset
    value that is not a single key; ``bounds`` gives the write range of an ``RW`` register,
    or a function of the configuration for ranges that depend on the generated sizes.
    ``source`` is the name of the port the value comes from (``RO``) or that the register
    drives (``RW``); ``outside`` marks an ``RW`` register whose value lives elsewhere (the
    sequencer's step counter and cursor): the file pulses ``<source>_set`` on a write.
    ``high`` names the ``RO`` register that latches bits 32 and up of a wide value when
    this one is read.  ``live`` marks an ``RW`` register that may be written while a
    command runs, when the file's ``<source>_ok`` input (computed from ``wdata`` outside)
    says so.
    """

    name: str
    address: int
    access: Access
    doc: str
    width: int | Callable[[Config], int] = 32
    config: str | None = None
    reset: Callable[[Config], int] | None = None
    bounds: tuple[int, int] | Callable[[Config], tuple[int, int]] | None = None
    present: Callable[[Config], bool] = _always
    source: str | None = None
    outside: bool = False
    high: str | None = None
    live: bool = False


REGISTERS: tuple[RegisterSpec, ...] = (
    RegisterSpec("ID", 0x00, Access.RO, 'ASCII "PRTB": the accelerator is there', source="id"),
    RegisterSpec("CONFIG_HASH", 0x01, Access.RO, "32-bit hash of the generation-time parameters",
                 source="config_hash"),
    RegisterSpec("STATUS", 0x02, Access.RO, "bit 0 BUSY, bit 1 DONE, bit 2 INFERENCE", source="status",
                 width=3),
    RegisterSpec("COMMAND", 0x03, Access.WO,
                 "1 TRAIN, 2 INFER, 3 CLEAR_COUNTERS (refused while busy); 4 ABORT (always accepted)"),
    RegisterSpec("STEPS", 0x04, Access.RW, "training steps (updates) the next TRAIN runs",
                 config="training.steps", bounds=_U32, source="steps", present=_training),
    RegisterSpec("STEP", 0x05, Access.RW, "the step counter k that positions the random sources",
                 bounds=_U32, source="step", outside=True, present=_training),
    RegisterSpec("SEED", 0x06, Access.RW, "seed of the on-chip random sources", config="seed",
                 source="seed", present=_training),
    RegisterSpec("LR_MULT", 0x07, Access.RW, "learning-rate numerator", width=8, config="rule.lr_mult",
                 source="lr_mult", present=_training),
    RegisterSpec("DELTA", 0x08, Access.RW, "MGD weight perturbation amplitude", width=7,
                 config="rule.delta", source="delta", present=_training),
    RegisterSpec("SIGMA", 0x09, Access.RW, "ALR noise scale (only with an ALR layer)", width=12,
                 config="rule.sigma", present=_has_rule(Rule.ALR), source="sigma"),
    RegisterSpec("COPIES", 0x0A, Access.RW, "perturbed passes per sample", width=9,
                 config="rule.copies", source="copies", present=_training),
    RegisterSpec("STEP_SAMPLES", 0x0B, Access.RW, "samples per update, tau_theta * batch", width=25,
                 reset=_step_samples, bounds=(1, STEP_SAMPLES_MAX),
                 source="step_samples", present=_training),
    RegisterSpec("TARGET_ON", 0x0C, Access.RW, "one-hot target value of the label's output", width=7,
                 config="rule.target_on", source="target_on", present=_training),
    RegisterSpec("SAMPLE_COUNT", 0x0D, Access.RW, "samples loaded; the cursor wraps here", width=_depth_bits,
                 bounds=_sample_count_bounds, source="sample_count", present=_training),
    RegisterSpec("SAMPLE_CURSOR", 0x0E, Access.RW, "next sample a training step takes",
                 bounds=_cursor_bounds, source="cursor", outside=True, present=_training),
    RegisterSpec("INFER_COUNT", 0x0F, Access.RW, "samples 0 .. INFER_COUNT - 1 that INFER runs",
                 width=_depth_bits, bounds=_infer_count_bounds, source="infer_count"),
    RegisterSpec("CYCLES_LO", 0x10, Access.RO,
                 "busy clock cycles but TRAIN_STREAM's waits for samples, low word (latches CYCLES_HI)",
                 width=_counter_bits, source="cycles", high="CYCLES_HI"),
    RegisterSpec("CYCLES_HI", 0x11, Access.RO, "busy clock cycles, high word as latched",
                 present=_wide_counters),
    RegisterSpec("STEPS_DONE", 0x12, Access.RO, "updates since the counters were cleared",
                 source="steps_done", present=_training),
    RegisterSpec("STALLS", 0x13, Access.RO, "cycles the forward pipe held work", source="stalls"),
    RegisterSpec("MAC_BUSY_LO", 0x14, Access.RO, "cycles the MACs worked, low word (latches MAC_BUSY_HI)",
                 width=_counter_bits, source="mac_busy", high="MAC_BUSY_HI"),
    RegisterSpec("MAC_BUSY_HI", 0x15, Access.RO, "cycles the MACs worked, high word as latched",
                 present=_wide_counters),
    RegisterSpec("LAST_LOSS", 0x16, Access.RO, "sum of the baseline losses of the last step",
                 source="last_loss", present=_training),
    RegisterSpec("READ_HIGH", 0x17, Access.RO, "bits 32.. of the last memory word read (grad_bits > 32)",
                 present=_wide, source="read_high"),
    RegisterSpec("WRITE_HIGH", 0x18, Access.RW, "bits 32.. of the next memory word written (grad_bits > 32)",
                 bounds=_U32, present=_wide, source="write_high"),
    RegisterSpec("LANES", 0x19, Access.RO, "MAC lanes", source="lanes"),
    RegisterSpec("SAMPLE_DEPTH", 0x1A, Access.RO, "sample buffer depth in samples", source="sample_depth"),
    RegisterSpec("ROWS", 0x1B, Access.RO, "weight/G/momentum rows of the network", source="rows"),
    RegisterSpec("NODE_DELTA", 0x1C, Access.RW, "MGD node perturbation amplitude (only with an mgd-node layer)",
                 width=21, config="rule.node_delta", present=_has_rule(Rule.MGD_NODE), source="node_delta"),
    RegisterSpec("SAMPLE_FILL", 0x1D, Access.RW,
                 "TRAIN_STREAM takes samples up to here: a step starts when STEP_SAMPLES samples lie "
                 "from SAMPLE_CURSOR to SAMPLE_FILL (ring of SAMPLE_COUNT); writable while it runs, "
                 "to grant more", bounds=_cursor_bounds, present=_streaming, source="fill", outside=True,
                 live=True),
)

#: Register word addresses in ``Space.REGS``, by name.
Reg = IntEnum("Reg", [(spec.name, spec.address) for spec in REGISTERS])
Reg.__doc__ = "Register word addresses in ``Space.REGS`` (docs: :data:`REGISTERS`)."


def _config_value(cfg: Config, key: str) -> int:
    value: object = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return int(value)  # type: ignore[arg-type]


def _config_bounds(key: str) -> tuple[int, int]:
    """The ``[ge, le]`` (or ``lt - 1``) range of an integer configuration field."""
    model: type = Config
    *path, name = key.split(".")
    for part in path:
        model = model.model_fields[part].annotation
    lo, hi = 0, 2**32 - 1
    for meta in model.model_fields[name].metadata:
        if isinstance(meta, annotated_types.Ge):
            lo = int(meta.ge)
        elif isinstance(meta, annotated_types.Gt):
            lo = int(meta.gt) + 1
        elif isinstance(meta, annotated_types.Le):
            hi = int(meta.le)
        elif isinstance(meta, annotated_types.Lt):
            hi = int(meta.lt) - 1
    return lo, min(hi, 2**32 - 1)


@dataclass(frozen=True)
class RegisterInfo:
    """A register of one generated accelerator: what ``accelerator.json`` lists."""

    name: str
    address: int
    access: str
    width: int
    reset: int
    lo: int | None
    hi: int | None
    config: str | None
    doc: str


def _bounds(spec: RegisterSpec, cfg: Config) -> tuple[int, int] | None:
    if spec.access != Access.RW:
        return None
    if callable(spec.bounds):
        return spec.bounds(cfg)
    if spec.bounds is not None:
        return spec.bounds
    assert spec.config is not None, f"{spec.name}: an RW register needs bounds or a config key"
    return _config_bounds(spec.config)


def _width(spec: RegisterSpec, cfg: Config) -> int:
    return spec.width(cfg) if callable(spec.width) else spec.width


def _from_config(spec: RegisterSpec) -> bool:
    """Whether the register's reset value is a configuration value."""
    return spec.config is not None or spec.reset is not None


def _reset(spec: RegisterSpec, cfg: Config) -> int:
    if spec.config is not None:
        return _config_value(cfg, spec.config)
    return spec.reset(cfg) if spec.reset is not None else 0


def register_map(cfg: Config, *, config_resets: bool = True) -> list[RegisterInfo]:
    """The registers an accelerator generated from ``cfg`` has, with ranges and reset values.

    ``config_resets=False``: a register whose reset is a configuration value (a run
    parameter: steps, seed, rates, ...) resets to the smallest value it accepts instead,
    so that the design depends on the generation parameters alone (:func:`config_hash`);
    the host writes those registers before every run anyway (:func:`config_values`).
    """
    out = []
    for spec in REGISTERS:
        if not spec.present(cfg):
            continue
        rng = _bounds(spec, cfg)
        reset = _reset(spec, cfg) if config_resets or not _from_config(spec) else rng[0]
        out.append(RegisterInfo(spec.name, spec.address, spec.access.value, min(_width(spec, cfg), 32),
                                reset,
                                None if rng is None else rng[0], None if rng is None else rng[1],
                                spec.config, spec.doc))
    return out


def absent_registers(cfg: Config) -> frozenset[Reg]:
    """Registers a build for ``cfg`` leaves out (their addresses answer ``err``).

    ``READ_HIGH`` and ``WRITE_HIGH`` carry the upper bits of words wider than 32 bits, so
    they exist only with ``grad_bits > 32``; ``SIGMA`` and ``NODE_DELTA`` only when a layer
    uses ALR or MGD node perturbation.  An inference-only build (``hardware.training:
    false``) leaves out every register only training reads: the run parameters (steps,
    seed, rates, copies, the sample count and cursor) and the step counters and loss.
    Every register costs flip-flops and a way of the
    read multiplexer: on an iCE40UP5K these four were about 100 logic cells.
    """
    return frozenset(Reg[spec.name] for spec in REGISTERS if not spec.present(cfg))


def config_values(cfg: Config) -> dict[Reg, int]:
    """The registers that carry configuration values, and those values (what a host writes
    to put a device into ``cfg``'s state)."""
    return {Reg[spec.name]: _reset(spec, cfg) for spec in REGISTERS
            if spec.access == Access.RW and _from_config(spec) and spec.present(cfg)}


class RegisterFile(wiring.Component):
    """The decoder of ``Space.REGS``, generated from :func:`register_map` for one configuration.

    Members
    -------
    req : ``In(1)``
        A request to a register this cycle (``addr``, ``we``, ``wdata`` valid).
    addr : ``In(8)``; we : ``In(1)``; wdata : ``In(32)``
    locked : ``In(1)``
        A command runs: every register write is refused (``COMMAND`` is left to ``command_ok``,
        a ``live`` register to ``<source>_ok``).
    rdata, err : ``Out(32)``, ``Out(1)``
        The answer, the cycle after ``req``.
    <source> : ``Out(width)`` for each ``RW`` register kept here (reset: its reset value);
        ``In(width)`` for each ``RO`` register and each ``outside`` ``RW`` register.
    <source>_set : ``Out(1)``
        An accepted write of an ``outside`` register (its value on ``wdata``).
    <source>_ok : ``In(1)``
        For a ``live`` register: a write of ``wdata`` is accepted while ``locked``.
    command : ``Out(1)``
        A write of ``COMMAND`` (its value on ``wdata``); ``command_ok`` (``In(1)``, the same
        cycle) says whether it was accepted.

    Parameters
    ----------
    settled_wdata : bool
        ``wdata`` holds its value from the cycle before ``req`` on (the ECP5 boards' and
        the co-simulation's pipelined bus): each register's range check is then a register,
        loaded every cycle, instead of comparisons between ``wdata`` and the error flag
        (a slowest path of the 16- and 32-lane ECP5 builds).
    """

    def __init__(self, cfg: Config, *, config_resets: bool = True, settled_wdata: bool = False) -> None:
        self.cfg = cfg
        self.settled_wdata = settled_wdata
        self.infos = {info.name: info for info in register_map(cfg, config_resets=config_resets)}
        members: dict[str, object] = {
            "req": In(1), "addr": In(8), "we": In(1), "wdata": In(32), "locked": In(1),
            "rdata": Out(32), "err": Out(1), "command": Out(1), "command_ok": In(1),
        }
        for spec in REGISTERS:
            if spec.name not in self.infos or spec.source is None:
                continue
            width = _width(spec, cfg)
            if spec.access == Access.RW and not spec.outside:
                members[spec.source] = Out(width, init=self.infos[spec.name].reset)
            else:
                members[spec.source] = In(width)
            if spec.outside:
                members[f"{spec.source}_set"] = Out(1)
            if spec.live:
                members[f"{spec.source}_ok"] = In(1)
        super().__init__(members)

    def elaborate(self, platform: object) -> Module:
        m = Module()
        latched = {spec.high: Signal(_width(spec, self.cfg) - 32, name=spec.high.lower())
                   for spec in REGISTERS if spec.high in self.infos}
        in_range = {spec.name: self._in_range(m, self.infos[spec.name]) for spec in REGISTERS
                    if spec.name in self.infos and spec.access == Access.RW}
        m.d.sync += [self.rdata.eq(0), self.err.eq(0)]
        with m.If(self.req), m.Switch(self.addr):
            for spec in REGISTERS:
                info = self.infos.get(spec.name)
                if info is None:
                    continue
                with m.Case(spec.address):
                    self._decode(m, spec, latched, in_range.get(spec.name))
            with m.Default():
                m.d.sync += self.err.eq(1)
        return m

    def _in_range(self, m: Module, info: RegisterInfo) -> Value:
        """Whether ``wdata`` lies in ``info``'s bounds (:meth:`of_wdata`)."""
        low, high = at_least(self.wdata, info.lo), at_most(self.wdata, info.hi)
        # (each bound is a Const where the word holds every value on its side; their AND
        # is an operator even then, so the test is of the two)
        if isinstance(low, Const) and isinstance(high, Const):
            return Const(1, 1)
        return self.of_wdata(m, low & high, f"{info.name.lower()}_in_range")

    def of_wdata(self, m: Module, value: Value, name: str) -> Value:
        """``value``, a function of ``wdata`` alone: with ``settled_wdata`` a register named
        ``name`` loaded every cycle, which holds it from ``req`` on; else ``value`` itself."""
        if not self.settled_wdata:
            return value
        settled = Signal.like(value, name=name)
        m.d.sync += settled.eq(value)
        return settled

    def _decode(self, m: Module, spec: RegisterSpec, latched: dict[str, Signal], in_range: Value | None) -> None:
        if spec.access == Access.WO:  # the command decides, busy or not (ABORT is always taken)
            with m.If(~self.we):
                m.d.sync += self.err.eq(1)
            with m.Else():
                m.d.comb += self.command.eq(1)
                m.d.sync += self.err.eq(~self.command_ok)
            return
        value: Value = latched[spec.name] if spec.name in latched else getattr(self, spec.source)
        m.d.sync += self.rdata.eq(value)
        if spec.high in latched:
            m.d.sync += latched[spec.high].eq(value[32:])
        if spec.access == Access.RO:
            with m.If(self.we):
                m.d.sync += self.err.eq(1)
            return
        ok = ~self.locked | getattr(self, f"{spec.source}_ok") if spec.live else ~self.locked
        ok = ok & in_range
        with m.If(self.we):
            with m.If(ok):
                if spec.outside:
                    m.d.comb += getattr(self, f"{spec.source}_set").eq(1)
                else:
                    m.d.sync += getattr(self, spec.source).eq(self.wdata)
            with m.Else():
                m.d.sync += self.err.eq(1)


def constant_sources(cfg: Config, rows: int, config_hash: int) -> dict[str, Value]:
    """The ``RO`` registers that are constants of the generated design."""
    return {"id": Const(ACCEL_ID, 32), "config_hash": Const(config_hash, 32),
            "lanes": Const(cfg.hardware.lanes, 32), "sample_depth": Const(cfg.hardware.sample_depth, 32),
            "rows": Const(rows, 32)}


def _cell(value: object) -> str:
    """A table cell for a spec field: a function by its docstring, a number as is."""
    return (value.__doc__ or "").strip() if callable(value) else str(value)


def register_table() -> str:
    """The register map as the Markdown table in ``docs/protocol.md`` (a test keeps the two
    equal: regenerate with ``python -m perturbo.hdl.registers``)."""
    lines = ["| address | name | access | bits | reset | writes accepted | present | meaning |",
             "| --- | --- | --- | ---: | --- | --- | --- | --- |"]
    for spec in REGISTERS:
        reset = f"`{spec.config}`" if spec.config else _cell(spec.reset) if spec.reset else "0"
        bits = f"32 of {_cell(spec.width)}" if spec.high else _cell(spec.width)
        if spec.access != Access.RW:
            bounds = reset = "—"
        elif spec.bounds is None:
            lo, hi = _config_bounds(spec.config or "")
            bounds = f"{lo} .. {hi} (the config's range)"
        elif callable(spec.bounds):
            bounds = _cell(spec.bounds)
        else:
            bounds = f"{spec.bounds[0]} .. {spec.bounds[1]}"
        lines.append(f"| `0x{spec.address:02X}` | `{spec.name}` | {spec.access.name} | {bits} "
                     f"| {reset} | {bounds} | {_cell(spec.present)} | {spec.doc} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(register_table(), end="")
