"""cocotb: RandomSource (the pipelined draws) and the drawn values vs golden.units."""

from __future__ import annotations

import os
import random

import cocotb
import torch
from hdl_tbutil import Bench

from perturbo.golden import units as u
from perturbo.hdl.random import RandomSource

LANES = int(os.environ["RANDOM_LANES"])
SOURCE = RandomSource(LANES, 32, 16)


@cocotb.test()
@cocotb.parametrize(traffic=[(0.0, 0.0), (0.4, 0.5)])
async def draws(dut, traffic: tuple[float, float]) -> None:
    """draw(key, index) per lane, in order, with the sign, noise and projection values."""
    idle, bp = traffic
    bench = Bench(dut, ("draws", traffic))
    await bench.reset()
    rng = random.Random(repr(traffic))
    src = bench.source("i", SOURCE.request_layout, idle)
    out = bench.sink("o", SOURCE.response_layout, bp)
    sent = []
    edge = [0, 1, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF]
    for n in range(300):
        key = edge[n] if n < len(edge) else rng.getrandbits(32)
        index = [edge[(n + k) % len(edge)] if n < len(edge) else rng.getrandbits(rng.choice([4, 12, 32]))
                 for k in range(LANES)]
        src.send({"key": key, "index": index, "tag": n})
        sent.append((key, index))
    # the helper values are sampled together with each transfer
    helpers = []
    orig_sample = out.sample

    def sample() -> None:
        if int(out.valid.value) and int(out.ready.value):
            helpers.append((dut.sign.value.to_unsigned(), dut.noise.value.to_unsigned(),
                            dut.proj.value.to_unsigned()))
        orig_sample()

    out.sample = sample
    await bench.run(lambda: len(out.received) == len(sent), 20_000, "the draws")
    for n, (got, (key, index), (sg, nz, pj)) in enumerate(zip(out.received, sent, helpers,
                                                                  strict=True)):
        assert got["tag"] == n, f"draw {n}: out of order (tag {got['tag']})"
        words = u.draw(torch.tensor(key), torch.tensor(index))
        for k in range(LANES):
            word = int(words[k])
            assert got["word"][k] == word, \
                f"random word differs: request {n} lane {k} key {key:#x} index {index[k]:#x}: " \
                f"rtl {got['word'][k]:#x} golden {word:#x}"
            t = torch.tensor(word)
            for name, raw, bits, gold in (("perturbation_sign", sg, 2, u.perturbation_sign(t)),
                                          ("gaussian_noise", nz, 10, u.gaussian_noise(t)),
                                          ("projection_value", pj, 8, u.projection_value(t))):
                v = (raw >> (k * bits)) & ((1 << bits) - 1)
                v = v - (1 << bits) if v >> (bits - 1) else v
                assert v == int(gold), f"{name} differs: word {word:#x}: rtl {v} golden {int(gold)}"
