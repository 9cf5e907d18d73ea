"""The golden hardware units at their edges (docs/numerics.md)."""

from __future__ import annotations

import pytest
import torch

from perturbo.config import Activation, Overflow, Rounding
from perturbo.golden import units as u


def t(*v: int) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.int64)


def test_saturation_at_both_ends() -> None:
    assert u.narrow(t(-129, -128, 127, 128, 10**9, -(10**9)), 8).tolist() == [-128, -128, 127, 127, 127, -128]
    assert u.narrow(t(2**31, -(2**31) - 1), 32).tolist() == [2**31 - 1, -(2**31)]


def test_wrap_keeps_low_bits() -> None:
    assert u.narrow(t(128, -129, 255, 256), 8, Overflow.WRAP).tolist() == [-128, 127, -1, 0]


def test_rounding_ties() -> None:
    # half-up: ties towards +infinity, for both signs
    assert u.round_shift(t(3, -3, 1, -1, 5, -5), 1).tolist() == [2, -1, 1, 0, 3, -2]
    # floor: towards -infinity
    assert u.round_shift(t(3, -3, 1, -1), 1, Rounding.FLOOR).tolist() == [1, -2, 0, -1]
    assert u.round_shift(t(-7, 7), 0).tolist() == [-7, 7]


def test_sign_of_zero_is_zero() -> None:
    assert u.sign(t(-5, 0, 9)).tolist() == [-1, 0, 1]
    # the ALR sign unit yields 0 for a zero input or a zero noise sample
    terms = u.alr_sign_terms(t(1000), t(0, 3).view(1, 2), t(0, 5).view(1, 2))
    assert terms.tolist() == [[[0, 0], [0, 1000]]]


def test_requantise_saturates_both_ends() -> None:
    acc = t(-(2**20), -128 * 128 - 64, 127 * 128 + 63, 2**20)
    assert u.requantise(acc, 7, Rounding.HALF_UP, Overflow.SATURATE).tolist() == [-128, -128, 127, 127]


def test_activations_and_gates() -> None:
    q = t(-128, -64, -1, 0, 1, 62, 63, 127)
    assert u.activation(q, Activation.RELU).tolist() == [0, 0, 0, 0, 1, 62, 63, 127]
    assert u.activation(q, Activation.LEAKY_RELU).tolist() == [-16, -8, -1, 0, 1, 62, 63, 127]
    assert u.activation(q, Activation.HARD_SIGMOID).tolist() == [0, 0, 63, 64, 65, 126, 127, 127]
    e = torch.full_like(q, -9)
    assert u.activation_gate(q, e, Activation.RELU).tolist() == [0, 0, 0, 0, -9, -9, -9, -9]
    assert u.activation_gate(q, e, Activation.LEAKY_RELU).tolist() == [-2, -2, -2, -9, -9, -9, -9, -9]
    assert u.activation_gate(q, e, Activation.HARD_SIGMOID).tolist() == [0, 0, -9, -9, -9, -9, 0, 0]


def test_mix32_known_values_and_bijection() -> None:
    # Reference values of Wang's hash32shift computed by hand-checked Python ints.
    def ref(x: int) -> int:
        m = 0xFFFFFFFF
        x = (~x + (x << 15)) & m
        x ^= x >> 12
        x = (x + (x << 2)) & m
        x ^= x >> 4
        x = (x * 2057) & m
        x ^= x >> 16
        return x

    xs = [0, 1, 2, 0xDEADBEEF, 0xFFFFFFFF, 0x80000000]
    assert u.mix32(torch.tensor(xs)).tolist() == [ref(x) for x in xs]
    # A bijection: no two of 2^20 consecutive inputs collide.
    out = u.mix32(torch.arange(1 << 20))
    assert torch.unique(out).numel() == 1 << 20


def test_random_source_replays_from_seed() -> None:
    idx = torch.arange(5000)
    a = u.draw(u.pass_key(7, u.STREAM_WEIGHT_SIGN, 123), idx)
    b = u.draw(u.pass_key(7, u.STREAM_WEIGHT_SIGN, 123), idx)
    assert torch.equal(a, b)
    # another seed, stream or event gives another sequence
    for key in (u.pass_key(8, 0, 123), u.pass_key(7, 1, 123), u.pass_key(7, 0, 124)):
        assert (u.draw(key, idx) != a).float().mean() > 0.99


def test_random_source_period_and_balance() -> None:
    # Per element the source is indexed by the event counter: over 2^16 events the
    # words of one synapse never repeat (the event -> key map is a bijection).
    keys = u.pass_key(3, 0, torch.arange(1 << 16))
    words = u.draw(keys, torch.tensor(17))
    assert torch.unique(words).numel() == 1 << 16
    s = u.perturbation_sign(words)
    assert abs(s.float().mean().item()) < 0.02
    # neighbouring synapses are uncorrelated across events
    s2 = u.perturbation_sign(u.draw(keys, torch.tensor(18)))
    assert abs((s * s2).float().mean().item()) < 0.02


def test_weight_signs_unpack_bits() -> None:
    words = t(0b101, 0xFFFF_FFFF).view(2, 1)  # two blocks, one input
    s = u.weight_signs(words, 40)
    assert s.shape == (40, 1)
    assert s[:4, 0].tolist() == [-1, 1, -1, 1] and (s[4:32] == 1).all() and (s[32:] == -1).all()


def test_weight_signs_are_independent_coins() -> None:
    # The 32 neurons of a sign word and those of its neighbouring word (the next input):
    # every pair of signs, across 2^16 events, at the level of independent coins (the
    # standard error of one correlation is 2^-8).
    keys = u.pass_key(3, u.STREAM_WEIGHT_SIGN, torch.arange(1 << 16))[:, None, None]
    s = u.weight_signs(u.draw(keys, t(17, 18).view(1, 2)), 32).transpose(1, 2).reshape(-1, 64).float()
    assert s.mean(0).abs().max().item() < 0.02
    corr = (s.T @ s) / s.shape[0] - torch.eye(64)
    assert corr.abs().max().item() < 0.025


def test_gaussian_noise_moments() -> None:
    n = u.gaussian_noise(u.draw(u.pass_key(1, 1, 0), torch.arange(1 << 18)))
    assert n.min() >= -510 and n.max() <= 510
    assert abs(n.float().mean().item()) < 1.5
    assert abs(n.float().std().item() - 147.8) < 1.5


def test_projection_values_are_signed_bytes() -> None:
    v = u.projection_value(t(0x00000000, 0x7F000000, 0x80000000, 0xFF123456))
    assert v.tolist() == [0, 127, -128, -1]


def test_projection_error_dead_zone() -> None:
    """tpsgd-l1's sign error is 0 where ``|y - tl| <= dead_zone``; 0 is the plain sign."""
    y, tl = t(0, 5, 10, 3, 127, 20, 20), t(0, 3, 13, -128, 127, 4, 36)
    assert u.projection_error("tpsgd-l1", y, tl).tolist() == [0, 1, -1, 1, 0, 1, -1]
    assert u.projection_error("tpsgd-l1", y, tl, 2).tolist() == [0, 0, -1, 1, 0, 1, -1]
    assert u.projection_error("tpsgd-l1", y, tl, 16).tolist() == [0, 0, 0, 1, 0, 0, 0]
    assert u.projection_error("tpsgd-l1", y, tl, 15).tolist() == [0, 0, 0, 1, 0, 1, -1]
    assert u.projection_error("tpsgd-l2", y, tl).tolist() == (y - tl).tolist()


def test_loss_and_target() -> None:
    target = u.one_hot_target(t(2, 0), 3, 96)
    assert target.tolist() == [[0, 0, 96], [96, 0, 0]]
    y = t(-128, 127, 96, 0, 0, 0).view(2, 3)
    assert u.loss_mse(y, target).tolist() == [128**2 + 127**2, 96**2]


@pytest.mark.parametrize("overflow", [Overflow.SATURATE, Overflow.WRAP])
def test_accumulate_narrows_after_every_addition(overflow: Overflow) -> None:
    g = t(100)
    terms = t(120, 120, -200).view(3, 1).squeeze(1).view(3)
    out = u.accumulate(g.view(()), terms, 8, overflow)
    if overflow == Overflow.SATURATE:
        # 100 + 120 -> 127, + 120 -> 127, - 200 -> -73 (not the exact 140 -> -60)
        assert out.item() == -73
    else:
        assert out.item() == ((100 + 120 + 120 - 200 + 128) % 256) - 128


def test_update_saturates_master_weights() -> None:
    w = t(32767, -32768, 0)
    g = t(-(2**20), 2**20, 3)
    out = u.update_weights(w, g, lr_mult=1, lr_shift=2, weight_bits=16,
                           rounding=Rounding.HALF_UP, overflow=Overflow.SATURATE)
    assert out.tolist() == [32767, -32768, -1]


def test_mac_weights_are_top_bits() -> None:
    assert u.mac_weights(t(32767, -32768, -1, 255, 256), 16).tolist() == [127, -128, -1, 0, 1]
