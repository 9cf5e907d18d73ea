"""Random sources as logic: the pipelined Wang hash and what is drawn from it.

docs/numerics.md §4: every random value is ``draw(key, index) = mix32(key ^ index)``
with ``key = pass_key(seed, stream, e) = mix32(seed ^ mix32((e << 2 | stream) mod 2^32))``
and ``draw(key, index) = mix32(mix32(key ^ index))`` (two rounds: one leaves the top
bits of neighbouring indices correlated).
Nothing needs storing: any draw can be replayed from its key.  (The correlation walker
reads the weight signs back from the :class:`~.memories.SignMemory` the forward engine
filled, and the node signs and noise signs from its factor memory, which costs less
logic than replaying them through a second set of hash pipes.)

- :class:`Mix32`: the six stages of ``mix32``, a register after every second one (or
  every ``stages_per_register``: ``hardware.hash_stages_per_register``), an enable for
  the whole pipe (latency :data:`MIX32_LATENCY` by default, one word per cycle);
- :class:`Draw`: ``draw(key, index)``, two :class:`Mix32` in a row (latency
  :data:`DRAW_LATENCY` by default);
- the pass key of an event, ``pass_key = mix32(seed ^ mix32(e << 2 | stream))``, is a
  :class:`Draw` with ``key = e << 2 | stream``, ``index = 0`` and ``tweak = seed``: the
  forward engine computes it on a lane's hash pipe between perturbed tokens;
- :func:`perturbation_sign`, :func:`weight_signs`, :func:`gaussian_noise`,
  :func:`projection_value`: the values drawn from a word, named as in
  :mod:`perturbo.golden.units`.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from perturbo.golden.units import SIGN_BLOCK

__all__ = [
    "MIX32_LATENCY",
    "DRAW_LATENCY",
    "mix32_latency",
    "draw_latency",
    "STREAM_WEIGHT_SIGN",
    "STREAM_NODE",
    "STREAM_PROJECTION",
    "mix32_stage",
    "Mix32",
    "Draw",
    "SIGN_BLOCK",
    "perturbation_sign",
    "weight_signs",
    "gaussian_noise",
    "projection_value",
]

#: The stages of ``mix32`` (docs/numerics.md §4).
MIX32_STAGES = 6
#: Stages between two registers of :class:`Mix32`.  Two: an xor stage then folds into
#: the following adder's LUTs (an iCE40 carry cell has a spare LUT input), and the pipe
#: holds half the flip-flops of one register per stage, which is most of what a hash
#: costs in logic cells.  Three adders' carry chains in a row would still pass 50 MHz.
MIX32_STAGES_PER_REGISTER = 2


def mix32_latency(stages_per_register: int = MIX32_STAGES_PER_REGISTER) -> int:
    """Cycles from a word entering :class:`Mix32` to its hash leaving it."""
    if stages_per_register not in (1, 2, 3, 6):
        raise ValueError(f"stages_per_register must be 1, 2, 3 or 6 (a divisor of "
                         f"{MIX32_STAGES}), not {stages_per_register!r}")
    return MIX32_STAGES // stages_per_register


def draw_latency(stages_per_register: int = MIX32_STAGES_PER_REGISTER) -> int:
    """Cycles from a key and index entering :class:`Draw` to the random word leaving it."""
    return 2 * mix32_latency(stages_per_register)


#: :func:`mix32_latency` with the default pipelining.
MIX32_LATENCY = mix32_latency()
#: :func:`draw_latency` with the default pipelining.
DRAW_LATENCY = draw_latency()

STREAM_WEIGHT_SIGN = 0
STREAM_NODE = 1
STREAM_PROJECTION = 2

_MASK = 0xFFFF_FFFF


def mix32_stage(x: Value, stage: int) -> Value:
    """Stage ``stage`` (0..5) of ``mix32`` on a 32-bit value (docs/numerics.md §4)."""
    x = Value.cast(x)
    if stage == 0:
        return (~x + (x << 15))[:32]
    if stage == 1:
        return x ^ (x >> 12)
    if stage == 2:
        return (x + (x << 2))[:32]
    if stage == 3:
        return x ^ (x >> 4)
    if stage == 4:
        return (x + (x << 3) + (x << 11))[:32]
    if stage == 5:
        return x ^ (x >> 16)
    raise ValueError(f"mix32 has stages 0..5, not {stage!r}")


class Mix32(wiring.Component):
    """Thomas Wang's ``hash32shift``, pipelined: ``stages_per_register`` of its six stages per cycle.

    ``o`` is ``mix32`` of the ``i`` that was present :attr:`latency` enabled cycles
    earlier.  All registers advance together when ``en`` is high, so the pipe stalls as
    one piece with the datapath that carries the matching control.

    Parameters
    ----------
    stages_per_register
        1, 2, 3 or 6 (default :data:`MIX32_STAGES_PER_REGISTER`).
    alternate
        A second word to hash, ``alt_i``, taken instead of ``i`` where ``alt_sel`` is high.
        Both go through the first stage's adder and the choice is made after it, so that a
        late ``alt_sel`` does not run through the adder's carry chain (a second adder's
        logic for it).

    Members
    -------
    en : ``In(1)``
        Advance the pipe (``init=1``: free-running when left unconnected).
    i : ``In(32)``
        Word to hash.
    alt_i, alt_sel : ``In(32)``, ``In(1)``
        With ``alternate``: the other word, and the choice of it.
    o : ``Out(32)``
        Hash of the word that entered :attr:`latency` advances ago.
    """

    def __init__(self, stages_per_register: int = MIX32_STAGES_PER_REGISTER, *, alternate: bool = False) -> None:
        self.latency = mix32_latency(stages_per_register)
        self.stages_per_register = stages_per_register
        self.alternate = alternate
        members = {"en": In(1, init=1), "i": In(32), "o": Out(32)}
        if alternate:
            members |= {"alt_i": In(32), "alt_sel": In(1)}
        super().__init__(members)

    def elaborate(self, platform: object) -> Module:
        m = Module()
        per = self.stages_per_register
        x = self.i
        for stage in range(MIX32_STAGES):
            x = mix32_stage(x, stage)
            if stage == 0 and self.alternate:  # both words through the adder, then the choice
                x = Mux(self.alt_sel, mix32_stage(self.alt_i, 0), x)
            if stage % per == per - 1:
                reg = Signal(32, name=f"s{stage}")
                with m.If(self.en):
                    m.d.sync += reg.eq(x)
                x = reg
        m.d.comb += self.o.eq(x)
        return m


class Draw(wiring.Component):
    """``mix32(mix32(key ^ index) ^ tweak)``, pipelined over :attr:`latency` cycles.

    With ``tweak = 0`` (its default) that is ``draw(key, index)``; with ``key = e << 2 |
    stream``, ``index = 0`` and ``tweak = seed`` it is ``pass_key(seed, stream, e)``.  The
    tweak is added where the word leaves the first round, so it must be presented
    ``latency // 2`` advances after the word entered.

    Parameters
    ----------
    stages_per_register
        Of each :class:`Mix32` (default :data:`MIX32_STAGES_PER_REGISTER`).
    alternate
        A second key, ``alt_key`` with index 0, taken instead of ``key`` and ``index``
        where ``alt_take`` is high, the choice made after the first stage's adder
        (:class:`Mix32`'s ``alternate``).

    Members
    -------
    en : ``In(1)``
        Advance the pipe (``init=1``).
    key : ``In(32)``
    index : ``In(32)``
    alt_key, alt_take : ``In(32)``, ``In(1)``
        With ``alternate``: the other key (index 0), and the choice of it.
    tweak : ``In(32)``
        XORed into the word between the rounds (0 unless connected).
    o : ``Out(32)``
        The word of the key and index that entered :attr:`latency` advances ago.
    """

    def __init__(self, stages_per_register: int = MIX32_STAGES_PER_REGISTER, *, alternate: bool = False) -> None:
        self.latency = draw_latency(stages_per_register)
        self.stages_per_register = stages_per_register
        self.alternate = alternate
        members = {"en": In(1, init=1), "key": In(32), "index": In(32), "tweak": In(32), "o": Out(32)}
        if alternate:
            members |= {"alt_key": In(32), "alt_take": In(1)}
        super().__init__(members)

    def elaborate(self, platform: object) -> Module:
        m = Module()
        m.submodules.round0 = r0 = Mix32(self.stages_per_register, alternate=self.alternate)
        m.submodules.round1 = r1 = Mix32(self.stages_per_register)
        m.d.comb += [
            r0.en.eq(self.en), r1.en.eq(self.en),
            r0.i.eq(self.key ^ self.index), r1.i.eq(r0.o ^ self.tweak), self.o.eq(r1.o),
        ]
        if self.alternate:
            m.d.comb += [r0.alt_i.eq(self.alt_key), r0.alt_sel.eq(self.alt_take)]
        return m


def perturbation_sign(word: Value) -> Value:
    """Bernoulli +-1 as ``signed(2)``: +1 if bit 31 of the word is 0, else -1."""
    word = Value.cast(word)
    return Mux(word[31], Const(-1, signed(2)), Const(1, signed(2)))


def weight_signs(words: list[Value], first: Value, count: int) -> Value:
    """``count`` weight signs from sign words laid end to end, from bit ``first`` on: bit ``k``
    set where the neuron ``k`` past the one at ``first`` has ``s = -1`` (bit ``i & 31`` of
    word ``i >> 5`` is neuron ``i``'s; neurons past the words read 0)."""
    return (Cat(*words, Const(0, count)) >> first)[:count]


def gaussian_noise(word: Value) -> Value:
    """``b0 + b1 + b2 + b3 - 510`` of the word's bytes, as ``signed(10)`` (-510..510)."""
    word = Value.cast(word)
    total = word[0:8] + word[8:16] + word[16:24] + word[24:32]  # unsigned(10), 0..1020
    return (total - 510)[:10].as_signed()


def projection_value(word: Value) -> Value:
    """A target-projection matrix entry: the word's top byte read as ``signed(8)``."""
    return Value.cast(word)[24:32].as_signed()
