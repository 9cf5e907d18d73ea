"""cocotb: the update unit (W -= round_shift(U * lr_mult, lr_shift_l), momentum)."""

from __future__ import annotations

import random

import cocotb
import torch
from hdl_model import first_difference, matrices_from_rows, weight_rows
from hdl_tbutil import Bench, config, read_rows, write_rows

from perturbo.golden import units as u
from perturbo.hdl.geometry import Geometry
from perturbo.hdl.update import UpdateUnit, operand_bits

cfg = config()
geo = Geometry(cfg)
UNIT = UpdateUnit(geo)
WB, GB = geo.weight_bits, geo.grad_bits


def rand_mats(rng: random.Random, bits: int, edges: bool = False) -> list[torch.Tensor]:
    """Random ``bits``-bit matrices of every layer, with the extremes, 0 and small values;
    with ``edges`` also values about the two limits of the update's narrowing of ``U``
    (:func:`~perturbo.hdl.update.operand_bits`): ``2^(weight_bits + lr_shift)``, beyond
    which a step saturates every weight, and the narrowed range's ends."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1

    def value(lay) -> int:
        picks = [rng.randint(lo, hi), lo, hi, 0, rng.randint(-99, 99)]
        if edges:
            near = [1 << (WB + lay.lr_shift), 1 << (operand_bits(geo) - 1)]
            picks += [rng.choice([-1, 1]) * rng.choice(near) + rng.randint(-2, 2)] * 3
        return max(lo, min(hi, rng.choice(picks)))

    return [torch.tensor([[value(lay) for _ in range(lay.cols)] for _ in range(lay.n_out)])
            for lay in geo.layers]


def golden_update(w: list[torch.Tensor], mom: list[torch.Tensor] | None, g: list[torch.Tensor],
                  lr: int) -> None:
    """The golden update of every layer, in place: momentum first (if any), then the weights."""
    for li, lay in enumerate(geo.layers):
        upd = g[li]
        if mom is not None:
            mom[li] = u.momentum_step(mom[li], g[li], geo.momentum_shift, GB, geo.rounding, geo.overflow)
            upd = mom[li]
        w[li] = u.update_weights(w[li], upd, lr_mult=lr, lr_shift=lay.lr_shift, weight_bits=WB,
                                 rounding=geo.rounding, overflow=geo.overflow)


async def fused_update(dut, bench: Bench, rng: random.Random, w: list[torch.Tensor],
                       mom: list[torch.Tensor] | None, lr: int, idle: float, what: str) -> None:
    """One update: every row's G (random and extreme) on ``sums`` in a random order, then the
    weights (and momentum) read back and compared with the golden update of ``w`` (and
    ``mom``), which it applies in place."""
    dut.lr_mult.value = lr
    g = rand_mats(rng, GB, edges=True)
    rows = weight_rows(geo, g)
    # rows at least the unit's beats apart (hardware.update_lanes), as the walker sends them
    src = bench.source("sums", UNIT.sums.signature.members["payload"].shape, idle, gap=geo.update_ratio - 1)
    order = list(range(geo.rows))
    rng.shuffle(order)
    for r in order:
        src.send({"row": r, "g": rows[r]})
    # back to back, a row a cycle (or a row every ratio cycles): the last row's last write is
    # the pipe's latency after it (and a few cycles of slack); with idle cycles between the
    # rows, no such bound
    ratio = geo.update_ratio
    limit = ratio * geo.rows + UpdateUnit.latency(geo) + 3 if idle == 0 else 20 * ratio * geo.rows + 100
    await bench.run(lambda: src.idle_now and not int(dut.busy.value), limit, what)
    golden_update(w, mom, g, lr)
    got_w = matrices_from_rows(geo, await read_rows(dut, "wtest", geo.weight_depth, geo.lanes, WB,
                                                             geo.weights_read_latency))
    msg = first_difference(f"weights after {what}", got_w, w)
    assert msg is None, msg
    if mom is not None:
        got_m = matrices_from_rows(geo, await read_rows(dut, "mtest", geo.weight_depth,
                                                        geo.lanes, GB))
        msg = first_difference(f"momentum after {what}", got_m, mom)
        assert msg is None, msg


@cocotb.test()
@cocotb.parametrize(idle=[0.0, 0.5])
async def updates(dut, idle: float) -> None:
    """Three updates with different learning rates on random and extreme W, G, M: G rows
    arrive on ``sums`` in any order, back to back or with idle cycles between them."""
    bench = Bench(dut, ("updates", idle))
    await bench.reset()
    rng = random.Random(repr(("updates", idle)))
    w = rand_mats(rng, WB)
    mom = rand_mats(rng, GB) if geo.momentum else None
    await write_rows(dut, "wtest", weight_rows(geo, w), WB)
    if mom is not None:
        await write_rows(dut, "mtest", weight_rows(geo, mom), GB)
    for lr in (cfg.rule.lr_mult, 255, 1):
        await fused_update(dut, bench, rng, w, mom, lr, idle, f"the update with lr_mult {lr}")
