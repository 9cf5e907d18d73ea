"""The vectorised golden model against a literal, scalar reading of docs/numerics.md.

The reference below uses Python integers and loops, one synapse at a time, in the
order the contract gives; it shares nothing with golden/ but the text.  Tiny
networks keep it fast; narrow widths make saturation and wrap-around happen.
"""

from __future__ import annotations

import math

import pytest
import torch

from perturbo.config import parse_config
from perturbo.golden.integer import IntegerModel

M32 = 0xFFFFFFFF


def mix32(x: int) -> int:
    x &= M32
    x = (~x + (x << 15)) & M32
    x ^= x >> 12
    x = (x + (x << 2)) & M32
    x ^= x >> 4
    x = (x * 2057) & M32
    x ^= x >> 16
    return x


def draw(seed: int, stream: int, event: int, index: int) -> int:
    key = mix32(seed ^ mix32(((event << 2) | stream) & M32))
    return mix32(mix32(key ^ index))


def narrow(v: int, bits: int, mode: str) -> int:
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if mode == "saturate":
        return min(max(v, lo), hi)
    return ((v - lo) % (1 << bits)) + lo


def round_shift(v: int, s: int, mode: str) -> int:
    if s == 0:
        return v
    return (v + (1 << (s - 1))) >> s if mode == "half-up" else v >> s


def sgn(v: int) -> int:
    return (v > 0) - (v < 0)


class Reference:
    def __init__(self, cfg, weights):
        self.c = cfg
        self.W = [w.tolist() for w in weights]
        self.M = [[[0] * len(r) for r in w] for w in self.W]
        self.k = 0
        num = cfg.numerics
        self.ov, self.rd = num.overflow.value, num.rounding.value
        self.act = cfg.network.activation.value
        self.rules = [r.value for r in cfg.layer_rules()]

    def phi(self, q, out):
        if out:
            return q
        if self.act == "relu":
            return max(q, 0)
        if self.act == "leaky-relu":
            return q if q >= 0 else q >> 3
        return min(max(q + 64, 0), 127)

    def gate(self, q, e, out):
        if out:
            return e
        if self.act == "relu":
            return e if q > 0 else 0
        if self.act == "leaky-relu":
            return e if q >= 0 else e >> 3
        return e if -64 < q < 63 else 0

    def forward(self, x, event=None, a=1):
        c, num = self.c, self.c.numerics
        xs, qs, ys = [], [], []
        h = list(x)
        s_off = n_off = 0
        L = len(self.W)
        for layer, W in enumerate(self.W):
            xa = h + [127]
            xs.append(xa)
            q_l, y_l = [], []
            for i, row in enumerate(W):
                acc = 0
                for j, wm in enumerate(row):
                    w = wm >> (num.weight_bits - 8)
                    if event is not None and self.rules[layer] == "mgd-weight":
                        s = 1 - 2 * ((draw(c.seed, 0, event, s_off + (i >> 5) * len(row) + j) >> (i & 31)) & 1)
                        w = narrow(w + c.rule.delta * a * s, 8, self.ov)
                    acc += w * xa[j]
                if event is not None and self.rules[layer] != "mgd-weight":
                    word = draw(c.seed, 1, event, n_off + i)
                    if self.rules[layer] == "mgd-node":
                        acc += c.rule.node_delta * a * (1 - 2 * (word >> 31))
                    else:
                        n = sum((word >> (8 * b)) & 255 for b in range(4)) - 510
                        acc += c.rule.sigma * a * n
                acc = narrow(acc, num.acc_bits, self.ov)
                q = narrow(round_shift(acc, c.network.layer_shifts[layer], self.rd), 8, self.ov)
                q_l.append(q)
                y_l.append(self.phi(q, layer == L - 1))
            s_off += -(-len(W) // 32) * len(W[0])
            n_off += len(W)
            qs.append(q_l)
            ys.append(y_l)
            h = y_l
        return xs, qs, ys

    def loss(self, y, label):
        return sum((v - (self.c.rule.target_on if k == label else 0)) ** 2 for k, v in enumerate(y))

    def step(self, X, Y):
        c, num = self.c, self.c.numerics
        G = [[[0] * len(r) for r in w] for w in self.W]
        S = len(X)

        def add(layer, i, j, v):
            G[layer][i][j] = narrow(G[layer][i][j] + v, num.grad_bits, self.ov)

        if set(self.rules) <= {"alr", "mgd-weight", "mgd-node"}:
            P = (c.rule.copies + 1) // 2
            for b in range(S):
                x0, _, y0 = self.forward(X[b])
                L0 = self.loss(y0[-1], Y[b])
                for m in range(c.rule.copies):
                    e = (self.k * S + b) * P + (m >> 1)
                    a = 1 - 2 * (m & 1)
                    xm, _, ym = self.forward(X[b], e, a)
                    dc = self.loss(ym[-1], Y[b]) - L0
                    s_off = n_off = 0
                    for layer, W in enumerate(self.W):
                        for i, row in enumerate(W):
                            for j in range(len(row)):
                                r = self.rules[layer]
                                if r == "mgd-weight":
                                    s = 1 - 2 * ((draw(c.seed, 0, e, s_off + (i >> 5) * len(row) + j) >> (i & 31)) & 1)
                                    add(layer, i, j, dc * a * s)
                                elif r == "mgd-node":
                                    s = 1 - 2 * (draw(c.seed, 1, e, n_off + i) >> 31)
                                    add(layer, i, j, dc * a * s * x0[layer][j])
                                else:
                                    word = draw(c.seed, 1, e, n_off + i)
                                    n = sum((word >> (8 * bb)) & 255 for bb in range(4)) - 510
                                    add(layer, i, j, dc * sgn(a * n) * sgn(xm[layer][j]))
                        s_off += -(-len(W) // 32) * len(W[0])
                        n_off += len(W)
        else:
            classes = c.network.layers[-1]
            L = len(self.W)
            for b in range(S):
                xs, qs, ys = self.forward(X[b])
                p_off = 0
                for layer, W in enumerate(self.W):
                    for i in range(len(W)):
                        y = ys[layer][i]
                        if layer == L - 1:
                            e = y - (c.rule.target_on if i == Y[b] else 0)
                        else:
                            word = draw(c.seed, 2, 0, p_off + Y[b] * len(W) + i)
                            tl = (word >> 24) - 256 * ((word >> 31) & 1)
                            l1 = sgn(y - tl) if abs(y - tl) > c.rule.dead_zone else 0
                            e = {"drtp": tl, "tpsgd-l1": l1, "tpsgd-l2": y - tl}[self.rules[layer]]
                        g = self.gate(qs[layer][i], e, layer == L - 1)
                        for j, xv in enumerate(xs[layer]):
                            add(layer, i, j, g * xv)
                    p_off += classes * len(W)
        lr_shifts = c.layer_lr_shifts()
        for layer, W in enumerate(self.W):
            for i, row in enumerate(W):
                for j in range(len(row)):
                    u = G[layer][i][j]
                    if c.rule.optimizer.value == "momentum":
                        m = self.M[layer][i][j]
                        m = narrow(m - round_shift(m, c.rule.momentum_shift, self.rd) + u, num.grad_bits, self.ov)
                        self.M[layer][i][j] = u = m
                    row[j] = narrow(
                        row[j] - round_shift(u * c.rule.lr_mult, lr_shifts[layer], self.rd), num.weight_bits, self.ov
                    )
        self.k += 1


CASES = {
    "mgd-weight": {"rule": {"name": "mgd-weight", "batch": 3, "copies": 2, "delta": 3, "lr_shift": 4}},
    "mgd-weight-wrap-floor": {
        "rule": {"name": "mgd-weight", "batch": 2, "lr_shift": 2},
        "numerics": {"weight_bits": 10, "grad_bits": 16, "overflow": "wrap", "rounding": "floor"},
    },
    "mgd-node-momentum": {
        "rule": {
            "name": "mgd-node",
            "batch": 2,
            "copies": 3,
            "node_delta": 200,
            "optimizer": "momentum",
            "momentum_shift": 2,
            "lr_shift": 6,
        },
    },
    "alr": {"rule": {"name": "alr", "batch": 2, "copies": 4, "sigma": 30, "lr_shift": [5, 7]}},
    "alr-saturating-grads": {
        "rule": {"name": "alr", "batch": 2, "copies": 4, "sigma": 40, "lr_mult": 3, "lr_shift": 1},
        "numerics": {"grad_bits": 16, "weight_bits": 12},
    },
    # 40 hidden neurons: their weight signs come from two sign words per input
    "mgd-weight-wide": {"rule": {"name": "mgd-weight", "batch": 2, "copies": 2, "delta": 3, "lr_shift": 6},
                        "network": {"layers": [6, 40, 3]}},
    "hybrid": {"rule": {"name": "alr", "per_layer": ["mgd-weight", "alr"], "batch": 2, "copies": 2, "lr_shift": 3}},
    "drtp": {"rule": {"name": "drtp", "batch": 3, "lr_shift": 8}},
    "tpsgd-l1-leaky": {
        "rule": {"name": "tpsgd-l1", "batch": 3, "lr_shift": 6},
        "network": {"activation": "leaky-relu"},
    },
    # a dead zone on the sign error: |y - tl| <= 24 gives 0
    "tpsgd-l1-dead-zone": {
        "rule": {"name": "tpsgd-l1", "batch": 3, "lr_shift": 6, "dead_zone": 24, "optimizer": "momentum"},
    },
    "tpsgd-l2-hardsig-narrow": {
        "rule": {"name": "tpsgd-l2", "batch": 3, "lr_shift": 3, "tau_theta": 2},
        "network": {"activation": "hard-sigmoid"},
        "numerics": {"grad_bits": 16, "weight_bits": 12},
    },
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_integer_model_equals_literal_reading(case: str) -> None:
    overrides = CASES[case]
    net = {"layers": [6, 5, 3], "shifts": [6, 7], **overrides.get("network", {})}
    cfg = parse_config({"seed": 11, **overrides, "network": net})
    model = IntegerModel(cfg)
    ref = Reference(cfg, model.weights)
    gen = torch.Generator().manual_seed(5)
    S = cfg.rule.batch * cfg.rule.tau_theta
    for _ in range(4):
        x = torch.randint(0, 128, (S, 6), generator=gen)
        x[0, :2] = 0  # zero inputs: sign of zero in the ALR units
        y = torch.randint(0, 3, (S,), generator=gen)
        model.train_step(x, y)
        ref.step(x.tolist(), y.tolist())
        for layer, (w, w_ref) in enumerate(zip(model.weights, ref.W, strict=True)):
            diff = (w != torch.tensor(w_ref)).nonzero()
            assert diff.numel() == 0, (
                f"{case}: weights differ after step {ref.k}: layer {layer} neuron {diff[0, 0].item()} "
                f"input {diff[0, 1].item()}: golden {w[tuple(diff[0])].item()} reference "
                f"{w_ref[diff[0, 0]][diff[0, 1]]}"
            )
    assert not math.isnan(model.last_loss_sum)
