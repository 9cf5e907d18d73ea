"""Bit-exact integer models of the hardware units (docs/numerics.md is the contract).

One function per unit of hdl/; the RTL twin of each has the same name.  Every
tensor here is ``torch.int64`` holding values of the documented width, and no
float ever touches a value on the bit-exact path (the dot products use float64
matmuls only because they are exact: every partial sum stays below 2^53).

Functions are vectorised: leading dimensions are copies, samples or steps.
"""

from __future__ import annotations

import numpy as np
import torch

from perturbo.config import MAC_WEIGHT_BITS, Activation, Overflow, Rounding

MASK32 = 0xFFFF_FFFF

#: Random-source streams (docs/numerics.md, "Random sources").
STREAM_WEIGHT_SIGN = 0
STREAM_NODE = 1
STREAM_PROJECTION = 2

#: The constant input that multiplies the bias column of every weight matrix.
BIAS_INPUT = 127
#: Offset that centres the sum of four uniform bytes (Irwin-Hall, n = 4).
NOISE_CENTRE = 510


# -- integer arithmetic -------------------------------------------------------------


def narrow(v: torch.Tensor, bits: int, overflow: Overflow = Overflow.SATURATE) -> torch.Tensor:
    """Fit signed values into ``bits`` bits: clamp (saturate) or keep the low bits (wrap)."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if overflow == Overflow.SATURATE:
        return v.clamp(lo, hi)
    return ((v - lo) & ((1 << bits) - 1)) + lo


def round_shift(v: torch.Tensor, shift: int, rounding: Rounding = Rounding.HALF_UP) -> torch.Tensor:
    """Arithmetic right shift by ``shift`` bits; half-up adds 2^(shift-1) first (ties towards +inf)."""
    if shift == 0:
        return v
    if rounding == Rounding.HALF_UP:
        v = v + (1 << (shift - 1))
    return v >> shift


def sign(v: torch.Tensor) -> torch.Tensor:
    """-1, 0 or +1; the sign of zero is zero."""
    return torch.sign(v)


# -- random sources -----------------------------------------------------------------


def _mix32_u32(x: np.ndarray) -> np.ndarray:
    # uint32 arithmetic wraps modulo 2^32 exactly as the hardware does, and is
    # about ten times faster than masking int64 tensors.
    with np.errstate(over="ignore"):  # 0-d arrays warn where arrays wrap silently
        x = ~x + (x << np.uint32(15))
        x ^= x >> np.uint32(12)
        x += x << np.uint32(2)
        x ^= x >> np.uint32(4)
        x *= np.uint32(2057)  # x + (x << 3) + (x << 11)
        x ^= x >> np.uint32(16)
    return x


def _to_u32(x: torch.Tensor | int) -> np.ndarray:
    return np.asarray((torch.as_tensor(x, dtype=torch.int64) & MASK32).numpy(), dtype=np.uint32)


def _from_u32(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(x, dtype=np.int64))


def mix32(x: torch.Tensor | int) -> torch.Tensor:
    """Thomas Wang's 32-bit integer hash (hash32shift): shifts, adds and xors only.

    ``x = ~x + (x << 15); x ^= x >> 12; x += x << 2; x ^= x >> 4; x *= 2057;
    x ^= x >> 16``, all modulo 2^32.  The hardware pipelines the six stages; it is
    a bijection on 32-bit words.
    """
    return _from_u32(_mix32_u32(_to_u32(x)))


def pass_key(seed: int, stream: int, event: torch.Tensor | int) -> torch.Tensor:
    """The key of one perturbation event: ``mix32(seed ^ mix32(event << 2 | stream))``."""
    event = torch.as_tensor(event, dtype=torch.int64)
    return mix32((seed & MASK32) ^ mix32(((event << 2) | stream) & MASK32))


def draw(key: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The 32-bit random word of element ``index`` under ``key``: ``mix32(mix32(key ^ index))``.

    One round leaves neighbouring indices' top bits correlated (|corr| up to 0.29 over
    2^15 events); two rounds bring every pair to the level of independent coins.
    ``key`` broadcasts against ``index`` (e.g. keys ``(E, 1)`` and indices ``(N,)``).
    """
    return _from_u32(_mix32_u32(_mix32_u32(_to_u32(key ^ index))))


def perturbation_sign(word: torch.Tensor) -> torch.Tensor:
    """Bernoulli +-1 from the top bit of a random word: 0 -> +1, 1 -> -1."""
    return 1 - 2 * (word >> 31)


#: Neurons whose weight signs share one random word: bit ``i & 31`` of it is neuron ``i``'s.
SIGN_BLOCK = 32


def sign_blocks(n_out: int) -> int:
    """Sign words per input of a layer of ``n_out`` neurons: one per block of 32."""
    return -(-n_out // SIGN_BLOCK)


def weight_signs(words: torch.Tensor, n_out: int) -> torch.Tensor:
    """The weight signs of ``n_out`` neurons from their sign words, ``(..., blocks, cols)`` ->
    ``(..., n_out, cols)``: neuron ``i``'s is bit ``i & 31`` of word ``i >> 5``, 0 -> +1, 1 -> -1.
    """
    bits = (words[..., None, :] >> torch.arange(SIGN_BLOCK)[:, None]) & 1  # (..., blocks, 32, cols)
    bits = bits.flatten(-3, -2)[..., :n_out, :]
    return 1 - 2 * bits


def gaussian_noise(word: torch.Tensor) -> torch.Tensor:
    """Approximately normal integer noise: the sum of the word's four bytes minus 510.

    Range -510..510, mean 0, standard deviation sqrt(4 * (256^2 - 1) / 12) = 147.8.
    """
    return (word & 255) + ((word >> 8) & 255) + ((word >> 16) & 255) + (word >> 24) - NOISE_CENTRE


def projection_value(word: torch.Tensor) -> torch.Tensor:
    """A target-projection matrix entry: the word's top byte as a signed INT8."""
    b = word >> 24
    return b - ((b >> 7) << 8)


# -- forward engine -----------------------------------------------------------------


def mac_weights(master: torch.Tensor, weight_bits: int) -> torch.Tensor:
    """The INT8 weights the MAC lanes read: the top 8 bits of the master weights."""
    return master >> (weight_bits - MAC_WEIGHT_BITS)


def perturb_weights(w8: torch.Tensor, delta_sign: torch.Tensor, overflow: Overflow) -> torch.Tensor:
    """Weight perturbation: ``narrow8(w8 + delta * s)``; ``delta_sign`` is already delta * s."""
    return narrow(w8 + delta_sign, 8, overflow)


def append_bias_input(x: torch.Tensor) -> torch.Tensor:
    """``x`` with the constant bias input 127 as its last feature."""
    ones = torch.full((*x.shape[:-1], 1), BIAS_INPUT, dtype=torch.int64)
    return torch.cat([x.to(torch.int64), ones], dim=-1)


def mac(x_aug: torch.Tensor, w8: torch.Tensor) -> torch.Tensor:
    """Dot products ``acc[..., i] = sum_j w8[..., i, j] * x_aug[..., j]`` (exact, int64).

    ``x_aug`` is ``(..., n_in + 1)`` and ``w8`` is ``(n_out, n_in + 1)`` or batched
    ``(..., n_out, n_in + 1)`` with matching leading dimensions.
    """
    xf = x_aug.to(torch.float64)
    wf = w8.to(torch.float64)
    if wf.dim() == 2:
        acc = xf @ wf.T
    else:
        acc = (wf @ xf.unsqueeze(-1)).squeeze(-1)
    return acc.to(torch.int64)


def activation(q: torch.Tensor, kind: Activation | None) -> torch.Tensor:
    """The activation on the requantised INT8 value (None: linear output layer)."""
    if kind is None:
        return q
    if kind == Activation.RELU:
        return q.clamp(min=0)
    if kind == Activation.LEAKY_RELU:
        return torch.where(q >= 0, q, q >> 3)
    if kind == Activation.HARD_SIGMOID:
        return (q + 64).clamp(0, 127)
    raise ValueError(f"unknown activation {kind!r}")


def activation_gate(q: torch.Tensor, e: torch.Tensor, kind: Activation | None) -> torch.Tensor:
    """``e * phi'(q)`` as the hardware forms it: a bit gate, or a shift for leaky ReLU."""
    if kind is None:
        return e
    if kind == Activation.RELU:
        return torch.where(q > 0, e, torch.zeros_like(e))
    if kind == Activation.LEAKY_RELU:
        return torch.where(q >= 0, e, e >> 3)
    if kind == Activation.HARD_SIGMOID:
        return torch.where((q > -64) & (q < 63), e, torch.zeros_like(e))
    raise ValueError(f"unknown activation {kind!r}")


def requantise(acc: torch.Tensor, shift: int, rounding: Rounding, overflow: Overflow) -> torch.Tensor:
    """Accumulator -> INT8: ``narrow8(round_shift(acc, shift))``."""
    return narrow(round_shift(acc, shift, rounding), 8, overflow)


def forward_layer(
    x: torch.Tensor,
    w8: torch.Tensor,
    *,
    shift: int,
    act: Activation | None,
    acc_bits: int,
    rounding: Rounding,
    overflow: Overflow,
    injection: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer of the forward engine: MAC, injection, narrowing, requantisation, activation.

    Returns ``(q, y)``: the requantised INT8 pre-activation and the activation output.
    ``injection`` (node perturbation delta * s or ALR sigma * n) is added to the
    accumulator before it is narrowed to ``acc_bits``.
    """
    acc = mac(append_bias_input(x), w8)
    if injection is not None:
        acc = acc + injection
    acc = narrow(acc, acc_bits, overflow)
    q = requantise(acc, shift, rounding, overflow)
    return q, activation(q, act)


# -- loss unit ----------------------------------------------------------------------


def one_hot_target(labels: torch.Tensor, classes: int, target_on: int) -> torch.Tensor:
    """INT8 targets: ``target_on`` at the label, 0 elsewhere."""
    t = torch.zeros((*labels.shape, classes), dtype=torch.int64)
    t.scatter_(-1, labels.unsqueeze(-1).to(torch.int64), target_on)
    return t


def loss_mse(y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error summed over the outputs: ``sum_k (y_k - t_k)^2`` (exact)."""
    d = y - target
    return (d * d).sum(-1)


# -- correlation unit and its front ends ---------------------------------------------


def accumulate(g: torch.Tensor, terms: torch.Tensor, bits: int, overflow: Overflow) -> torch.Tensor:
    """``g += terms[0]; g += terms[1]; ...`` with ``narrow`` after every addition.

    Saturating addition is not associative, so the order (the hardware's: sample
    major, copy minor) matters.  When no running sum leaves the range the sum is
    computed at once; otherwise the additions run one by one.
    """
    if terms.shape[0] == 0:
        return g
    running = g.unsqueeze(0) + terms.cumsum(0)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if overflow == Overflow.WRAP or (running.min() >= lo and running.max() <= hi):
        return narrow(running[-1], bits, overflow)
    for t in terms:
        g = narrow(g + t, bits, overflow)
    return g


def mgd_weight_terms(delta_c: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """MGD weight perturbation: per event ``dC * s_ij`` (``(E,)`` x ``(E, n_out, n_in+1)``)."""
    return delta_c[:, None, None] * signs


def mgd_node_terms(delta_c: torch.Tensor, node_signs: torch.Tensor, x_aug: torch.Tensor) -> torch.Tensor:
    """MGD node perturbation: per event ``dC * s_i * x_j`` with the baseline input ``x``."""
    return (delta_c[:, None] * node_signs)[:, :, None] * x_aug[:, None, :]


def alr_sign_terms(delta_c: torch.Tensor, noise: torch.Tensor, x_aug: torch.Tensor) -> torch.Tensor:
    """ALR sign units: per copy ``dC * sign(x_j) * sign(eps_i)``; the sign product is INT8."""
    sign_product = sign(noise)[:, :, None] * sign(x_aug)[:, None, :]
    return delta_c[:, None, None] * sign_product


def target_projection_terms(error: torch.Tensor, x_aug: torch.Tensor) -> torch.Tensor:
    """Target projection (and the output delta rule): per sample ``e_i * x_j``."""
    return error[:, :, None] * x_aug[:, None, :]


def projection_error(
    rule: str, y: torch.Tensor, local_target: torch.Tensor, dead_zone: int = 0
) -> torch.Tensor:
    """The hidden-layer error of a target-projection rule, before the phi' gate.

    ``drtp``: the projected target itself; ``tpsgd-l1``: sign(y - t), and 0 where
    ``|y - t| <= dead_zone`` (``rule.dead_zone``; 0: the plain sign, whose sign of 0 is 0);
    ``tpsgd-l2``: y - t.
    """
    if rule == "drtp":
        return local_target
    if rule == "tpsgd-l1":
        diff = y - local_target
        return torch.where(diff.abs() > dead_zone, sign(diff), torch.zeros_like(diff))
    if rule == "tpsgd-l2":
        return y - local_target
    raise ValueError(f"not a target-projection rule: {rule!r}")


# -- update unit --------------------------------------------------------------------


def momentum_step(m: torch.Tensor, g: torch.Tensor, shift: int, bits: int, rounding: Rounding,
                  overflow: Overflow) -> torch.Tensor:
    """Integer momentum: ``m = narrow(m - round_shift(m, shift) + g)``."""
    return narrow(m - round_shift(m, shift, rounding) + g, bits, overflow)


def update_weights(master: torch.Tensor, g: torch.Tensor, *, lr_mult: int, lr_shift: int,
                   weight_bits: int, rounding: Rounding, overflow: Overflow) -> torch.Tensor:
    """``W = narrow(W - round_shift(G * lr_mult, lr_shift), weight_bits)``."""
    return narrow(master - round_shift(g * lr_mult, lr_shift, rounding), weight_bits, overflow)
