"""cocotb: the loss unit (sum of squared errors against the one-hot target, and dC)."""

from __future__ import annotations

import os
import random

import cocotb
import torch
from hdl_tbutil import Bench, config

from perturbo.golden import units as u
from perturbo.hdl.geometry import Geometry
from perturbo.hdl.loss import LossUnit

cfg = config()
geo = Geometry(cfg)
UNIT = LossUnit(geo, 16)
OUT = geo.layers[-1]
#: Added to every expected loss: tests/test_waves.py makes this testbench fail on purpose.
LOSS_BIAS = int(os.environ.get("PERTURBO_TB_LOSS_BIAS", "0"))


@cocotb.test()
@cocotb.parametrize(traffic=[(0.0, 0.0), (0.5, 0.5)])
async def losses(dut, traffic: tuple[float, float]) -> None:
    """Random and extreme outputs, labels and targets; baseline then perturbed passes."""
    idle, bp = traffic
    bench = Bench(dut, ("loss", traffic))
    await bench.reset()
    rng = random.Random(repr(traffic))
    for target_on in (cfg.rule.target_on, 127, 0):
        dut.target_on.value = target_on
        src = bench.source("i", UNIT.group_layout, idle)
        out = bench.sink("o", UNIT.result_layout, bp)
        expected = []
        base = 0
        for n in range(24):
            baseline = n % 3 == 0
            label = rng.randrange(geo.classes)
            kind = rng.choice(["random", "min", "max", "target"])
            if kind == "random":
                y = torch.tensor([rng.randint(-128, 127) for _ in range(geo.classes)])
            elif kind == "min":
                y = torch.full((geo.classes,), -128)
            elif kind == "max":
                y = torch.full((geo.classes,), 127)
            else:
                y = u.one_hot_target(torch.tensor(label), geo.classes, target_on)
            loss = int(u.loss_mse(y, u.one_hot_target(torch.tensor(label), geo.classes, target_on)))
            if baseline:
                base = loss
            expected.append((loss + LOSS_BIAS, 0 if baseline else loss - base, baseline))
            for g in range(OUT.groups):
                count = OUT.neurons_in(g)
                lanes = [int(y[g * OUT.per_group + k]) if k < count else rng.randint(-128, 127)
                         for k in range(geo.lanes)]
                src.send({"y": lanes, "mask": (1 << count) - 1, "group": g,
                          "last": int(g == OUT.groups - 1), "label": label,
                          "baseline": int(baseline), "tag": n})
        await bench.run(lambda out=out, expected=expected: len(out.received) == len(expected),
                        50 * len(expected) * OUT.groups * geo.lanes, "the losses")
        bench.sources.remove(src)
        bench.sinks.remove(out)
        for n, (got, (loss, dc, baseline)) in enumerate(zip(out.received, expected, strict=True)):
            where = f"target_on {target_on} pass {n}"
            assert got["tag"] == n, f"{where}: tag {got['tag']}"
            assert got["loss"] == loss, f"loss differs: {where}: rtl {got['loss']} golden {loss}"
            assert got["dc"] == dc, f"dC differs: {where}: rtl {got['dc']} golden {dc}"
            assert got["baseline"] == baseline
