"""The accelerator's host-side memory-mapped bus: signature, address spaces and registers.

The host link drives this bus from the initiator side (``Out(BusSignature)``); the
:class:`~perturbo.hdl.accelerator.Accelerator` is the target (``In(BusSignature)``).

Transfers
---------
One request at a time.  The initiator sets ``addr``, ``we`` and ``wdata`` and raises
``stb``, holding all four until the target answers with ``ack`` for exactly one cycle.
On a read, ``rdata`` is valid in that ``ack`` cycle.  ``err`` is valid with ``ack``: it
says that the request was refused and had no effect (a read then returns 0).  The
target ignores ``stb`` during the ``ack`` cycle, so an initiator may drop ``stb`` there
or one cycle later.  A request takes at least two cycles (``stb`` seen, then ``ack``);
the accelerator takes a request the cycle it appears and answers a register one cycle
after, a memory read two; with ``pipelined_reads`` (the ECP5 boards, the
co-simulation) it takes a request two cycles after it appears and answers a register two
cycles after that, a memory read four.

Addresses
---------
``addr[24:32]`` is the address space (:class:`Space`) and ``addr[0:24]`` a word address
inside it.  Every word is 32 bits; narrower values are sign-extended on reads and must
be in range on writes (otherwise ``err``).  Values wider than 32 bits (``grad_bits`` up
to 48) are split: a read latches bits 32 and up (sign-extended) into ``Reg.READ_HIGH``;
a write takes them from ``Reg.WRITE_HIGH``.  The two registers exist only in an
accelerator with ``grad_bits > 32``, ``SIGMA`` only with an ALR layer and ``NODE_DELTA``
only with an MGD node-perturbation layer; elsewhere their addresses are unknown
(``err``; :func:`~perturbo.hdl.registers.absent_registers`).

The spaces (:class:`Space`), their word addresses and the register table are in
``docs/protocol.md`` ("The accelerator's address map"), the registers generated from
:data:`~perturbo.hdl.registers.REGISTERS`.

Memory accesses while a command runs (``STATUS.BUSY``) are refused with ``err`` (but
reads of ``LOSSES``, and, while ``TRAIN_STREAM`` runs, writes of samples and labels the
run does not use), as
are writes to any register then, accesses outside a space's range, writes to read-only
registers or to ``OUTPUTS``, and unknown addresses.
"""

from __future__ import annotations

from enum import IntEnum

from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .registers import ACCEL_ID, Reg

__all__ = [
    "ACCEL_ID", "SPACE_BITS", "WORD_ADDR_BITS", "BusSignature", "HostBusSignature", "Space", "Reg",
    "Command", "Status",
]

#: Bits of the word address inside a space (``addr[0:24]``); the space is ``addr[24:32]``.
WORD_ADDR_BITS = 24
#: Bits of the address-space number.
SPACE_BITS = 8

class HostBusSignature(wiring.Signature):
    """Signature of the host bus, from the initiator's (host link's) side.

    Members
    -------
    addr : ``Out(32)``
        ``addr[24:32]`` address space (:class:`Space`), ``addr[0:24]`` word address.
    wdata : ``Out(32)``
        Write data.
    we : ``Out(1)``
        1 for a write, 0 for a read.
    stb : ``Out(1)``
        Request valid; held (with ``addr``, ``wdata``, ``we``) until ``ack``.
    ack : ``In(1)``
        One-cycle answer; ``rdata`` and ``err`` are valid in this cycle.
    rdata : ``In(32)``
        Read data.
    err : ``In(1)``
        With ``ack``: the request was refused and had no effect.
    """

    def __init__(self) -> None:
        super().__init__({
            "addr": Out(32),
            "wdata": Out(32),
            "we": Out(1),
            "stb": Out(1),
            "ack": In(1),
            "rdata": In(32),
            "err": In(1),
        })


#: The bus signature (an instance): ``Out(BusSignature)`` on the host link, ``In(BusSignature)``
#: on the accelerator.
BusSignature = HostBusSignature()


class Space(IntEnum):
    """Address spaces (``addr[24:32]``)."""

    REGS = 0
    WEIGHTS = 1
    GRADS = 2
    SAMPLES = 3
    LABELS = 4
    OUTPUTS = 5
    MOMENTUM = 6
    #: The loss record (``hardware.streaming`` builds): read-only, readable while busy.
    LOSSES = 7


class Command(IntEnum):
    """Values written to ``Reg.COMMAND``."""

    #: Run ``STEPS`` training steps from ``SAMPLE_CURSOR``.
    TRAIN = 1
    #: Run the baseline pass on samples ``0 .. INFER_COUNT - 1``; scores go to ``Space.OUTPUTS``.
    INFER = 2
    #: Zero ``CYCLES``, ``STEPS_DONE``, ``STALLS`` and ``MAC_BUSY``.
    CLEAR_COUNTERS = 3
    #: Stop the running command where its state is whole: a training run after the step
    #: in progress (its update applied, ``STEP`` and ``STEPS_DONE`` counting it), an
    #: inference run after the passes already issued.  The only command accepted while
    #: busy; accepted and without effect when idle.  ``DONE`` rises when it has stopped.
    ABORT = 4
    #: Like ``TRAIN``, taking samples from the sample buffer as a ring the host refills while
    #: the run goes on: a step starts only when ``STEP_SAMPLES`` samples lie between
    #: ``SAMPLE_CURSOR`` and ``SAMPLE_FILL``; sample and label writes outside the samples
    #: in use, and ``SAMPLE_FILL`` writes that grant more, are accepted while it runs
    #: (``hardware.streaming`` builds; docs/protocol.md).
    TRAIN_STREAM = 5


class Status(IntEnum):
    """Bits of ``Reg.STATUS``."""

    #: A command is running.
    BUSY = 1 << 0
    #: The last command has finished (cleared when a command starts).
    DONE = 1 << 1
    #: The running or last command is ``INFER``.
    INFERENCE = 1 << 2
