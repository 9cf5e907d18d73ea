"""The bit-exact integer training step of every rule, built only from golden.units.

:class:`IntegerModel` is the reference the RTL is checked against with ``==`` and the
``golden`` training backend.  docs/numerics.md describes each step in words.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from perturbo.backend import OneStepAtATime
from perturbo.config import (
    PERTURBATIVE_RULES,
    TARGET_PROJECTION_RULES,
    Activation,
    Config,
    Optimizer,
    Overflow,
    Rule,
)

from . import units as u


@dataclass(frozen=True)
class LayerLayout:
    """Where a layer's elements sit in the random sources' index spaces."""

    n_in: int
    n_out: int
    sign_offset: int  #: first sign word: w[i, j]'s sign is in word sign_offset + (i >> 5) * (n_in + 1) + j
    neuron_offset: int  #: first neuron index: neuron i is neuron_offset + i
    projection_offset: int  #: first projection index: B[c, i] is projection_offset + c * n_out + i

    def sign_word_indices(self) -> torch.Tensor:
        """``(blocks, n_in + 1)``: the index of the sign word of every block of 32 neurons and input."""
        blocks = u.sign_blocks(self.n_out)
        return self.sign_offset + torch.arange(blocks * (self.n_in + 1)).view(blocks, self.n_in + 1)

    def neuron_indices(self) -> torch.Tensor:
        return self.neuron_offset + torch.arange(self.n_out)


def layer_layouts(cfg: Config) -> list[LayerLayout]:
    """Index offsets of every layer, in layer order (docs/numerics.md, "Random sources")."""
    out, s_off, n_off, p_off = [], 0, 0, 0
    classes = cfg.network.layers[-1]
    for n_out, cols in cfg.layer_shapes():
        out.append(LayerLayout(cols - 1, n_out, s_off, n_off, p_off))
        s_off += u.sign_blocks(n_out) * cols
        n_off += n_out
        p_off += classes * n_out
    return out


def init_weights(cfg: Config) -> list[torch.Tensor]:
    """Host-side initial master weights: He-normal, biases zero, from ``cfg.seed``.

    Not part of the hardware; the host writes these into the weight memories.
    """
    gen = torch.Generator().manual_seed(cfg.seed)
    wb = cfg.numerics.weight_bits
    scale = 128 * 2 ** (wb - 8)  # a real weight of 1.0 is w8 = 128
    weights = []
    for n_out, cols in cfg.layer_shapes():
        real = torch.randn(n_out, cols - 1, generator=gen, dtype=torch.float64)
        real *= math.sqrt(2.0 / (cols - 1)) * cfg.network.init_scale
        w = torch.round(real * scale).to(torch.int64)
        w = torch.cat([w, torch.zeros(n_out, 1, dtype=torch.int64)], dim=1)
        weights.append(u.narrow(w, wb))
    return weights


def projection_matrices(cfg: Config) -> list[torch.Tensor | None]:
    """The fixed random matrices B_l (classes x n_l) of the hidden layers; None for the output."""
    layouts = layer_layouts(cfg)
    classes = cfg.network.layers[-1]
    key = u.pass_key(cfg.seed, u.STREAM_PROJECTION, 0)
    mats: list[torch.Tensor | None] = []
    for lay in layouts[:-1]:
        idx = lay.projection_offset + torch.arange(classes * lay.n_out).view(classes, lay.n_out)
        mats.append(u.projection_value(u.draw(key, idx)))
    mats.append(None)
    return mats


@dataclass
class ForwardTrace:
    """What one forward pass leaves behind for the correlation unit."""

    inputs: list[torch.Tensor]  #: layer inputs with the bias input appended, (..., n_in + 1)
    q: list[torch.Tensor]  #: requantised pre-activations
    y: list[torch.Tensor]  #: activation outputs

    @property
    def output(self) -> torch.Tensor:
        return self.y[-1]


class IntegerModel(OneStepAtATime):
    """The bit-exact integer accelerator: weights, accumulators and the training step.

    Parameters
    ----------
    cfg
        The resolved configuration; ``cfg.rule`` selects the rule (or per-layer hybrid).
    weights
        Initial master weights; defaults to :func:`init_weights`.

    Members
    -------
    weights : list of torch.Tensor
        Master weights, ``(n_out, n_in + 1)`` int64 of ``weight_bits`` bits; the last
        column is the bias.
    momentum : list of torch.Tensor or None
        Momentum accumulators when ``optimizer: momentum``.
    step : int
        Updates applied so far; it also positions the random sources.
    """

    def __init__(self, cfg: Config, weights: list[torch.Tensor] | None = None) -> None:
        if cfg.rule.name == Rule.BP and cfg.rule.per_layer is None:
            raise ValueError("rule 'bp' has no integer hardware form; use the float reference")
        self.cfg = cfg
        self.rules = cfg.layer_rules()
        self.perturbative = all(r in PERTURBATIVE_RULES for r in self.rules)
        if not self.perturbative and not all(r in TARGET_PROJECTION_RULES for r in self.rules):
            raise ValueError(f"cannot mix rules {sorted({r.value for r in self.rules})} in one network")
        self.layouts = layer_layouts(cfg)
        n = cfg.network.n_layers
        self.acts: list[Activation | None] = [cfg.network.activation] * (n - 1) + [None]
        self.shifts = cfg.network.layer_shifts
        self.lr_shifts = cfg.layer_lr_shifts()
        self.projections = projection_matrices(cfg) if not self.perturbative else [None] * n
        self.weights = [w.clone() for w in (weights if weights is not None else init_weights(cfg))]
        self.momentum: list[torch.Tensor] | None = (
            [torch.zeros_like(w) for w in self.weights] if cfg.rule.optimizer == Optimizer.MOMENTUM else None
        )
        self.step = 0
        self.last_loss_sum = 0
        #: The LR_MULT register: the host may change it between steps (a schedule).
        self.lr_mult = cfg.rule.lr_mult

    # -- forward ------------------------------------------------------------------------

    def mac_weights(self) -> list[torch.Tensor]:
        return [u.mac_weights(w, self.cfg.numerics.weight_bits) for w in self.weights]

    def forward(
        self,
        x: torch.Tensor,
        w8: list[torch.Tensor] | None = None,
        injections: list[torch.Tensor | None] | None = None,
    ) -> ForwardTrace:
        """A whole forward pass; ``w8`` may hold per-copy perturbed weights, ``injections`` node noise."""
        num = self.cfg.numerics
        w8 = w8 if w8 is not None else self.mac_weights()
        trace = ForwardTrace([], [], [])
        h = x.to(torch.int64)
        for layer in range(len(self.weights)):
            trace.inputs.append(u.append_bias_input(h))
            q, h = u.forward_layer(
                h,
                w8[layer],
                shift=self.shifts[layer],
                act=self.acts[layer],
                acc_bits=num.acc_bits,
                rounding=num.rounding,
                overflow=num.overflow,
                injection=None if injections is None else injections[layer],
            )
            trace.q.append(q)
            trace.y.append(h)
        return trace

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Output-layer INT8 scores of the unperturbed network."""
        return self.forward(x).output

    def loss(self, y: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        target = u.one_hot_target(labels, self.cfg.network.layers[-1], self.cfg.rule.target_on)
        return u.loss_mse(y, target)

    # -- training -----------------------------------------------------------------------

    def train_step(self, x: torch.Tensor, labels: torch.Tensor) -> float:
        """One update on ``tau_theta * batch`` samples; returns the mean baseline loss."""
        expected = self.cfg.rule.tau_theta * self.cfg.rule.batch
        if x.shape[0] != expected:
            raise ValueError(f"a step takes {expected} samples, got {x.shape[0]}")
        labels = labels.to(torch.int64)
        grads = self._perturbative_grads(x, labels) if self.perturbative else self._projection_grads(x, labels)
        self._update(grads)
        self.step += 1
        return self.last_loss_sum / x.shape[0]

    def _correlate(self, g: torch.Tensor, dc: torch.Tensor, a: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        """``g += dc_e * a_e[i] * b_e[j]`` (or ``dc_e * a_e[i, j]`` when ``b`` is None), event by event."""
        num = self.cfg.numerics
        hi = (1 << (num.grad_bits - 1)) - 1
        if b is None:
            peak = dc.abs() * a.flatten(1).abs().amax(1)
        else:
            peak = dc.abs() * a.abs().amax(1) * b.abs().amax(1)
        if num.overflow == Overflow.WRAP or int(g.abs().max()) + int(peak.sum()) <= hi:
            # No running sum can leave the range: one exact float64 contraction.
            scaled = (dc[:, None] * (a.flatten(1) if b is None else a)).to(torch.float64)
            if b is None:
                total = scaled.sum(0).view_as(g)
            else:
                total = scaled.T @ b.to(torch.float64)
            return u.narrow(g + total.to(torch.int64), num.grad_bits, num.overflow)
        if b is None:
            terms = u.mgd_weight_terms(dc, a)
        else:
            terms = dc[:, None, None] * a[:, :, None] * b[:, None, :]
        return u.accumulate(g, terms, num.grad_bits, num.overflow)

    def _perturbative_grads(self, x: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
        cfg, num = self.cfg, self.cfg.numerics
        copies = cfg.rule.copies
        pairs = (copies + 1) // 2
        samples = x.shape[0]
        # Event numbers: sample-major, one random draw per antithetic pair.
        sample_ids = torch.arange(samples).repeat_interleave(copies)
        copy_ids = torch.arange(copies).repeat(samples)
        events = (self.step * samples + sample_ids) * pairs + (copy_ids >> 1)
        antithetic = 1 - 2 * (copy_ids & 1)  # +1 for even copies, -1 for their twins

        base = self.forward(x)
        base_loss = self.loss(base.output, labels)
        self.last_loss_sum = int(base_loss.sum())

        w8 = self.mac_weights()
        pert_w8: list[torch.Tensor] = []
        injections: list[torch.Tensor | None] = []
        signs: list[torch.Tensor | None] = []
        for layer, (rule, lay) in enumerate(zip(self.rules, self.layouts, strict=True)):
            if rule == Rule.MGD_WEIGHT:
                key = u.pass_key(cfg.seed, u.STREAM_WEIGHT_SIGN, events)[:, None, None]
                words = u.draw(key, lay.sign_word_indices()[None])
                s = u.weight_signs(words, lay.n_out) * antithetic[:, None, None]
                pert_w8.append(u.perturb_weights(w8[layer][None], cfg.rule.delta * s, num.overflow))
                injections.append(None)
            else:
                key = u.pass_key(cfg.seed, u.STREAM_NODE, events)[:, None]
                word = u.draw(key, lay.neuron_indices()[None])
                if rule == Rule.MGD_NODE:
                    s = u.perturbation_sign(word) * antithetic[:, None]
                    injections.append(cfg.rule.node_delta * s)
                else:
                    s = u.gaussian_noise(word) * antithetic[:, None]
                    injections.append(cfg.rule.sigma * s)
                pert_w8.append(w8[layer])
            signs.append(s)

        noisy = self.forward(x.repeat_interleave(copies, 0), pert_w8, injections)
        delta_c = self.loss(noisy.output, labels.repeat_interleave(copies)) - base_loss.repeat_interleave(copies)

        grads = []
        for layer, rule in enumerate(self.rules):
            g = torch.zeros_like(self.weights[layer])
            s = signs[layer]
            if rule == Rule.MGD_WEIGHT:
                g = self._correlate(g, delta_c, s, None)
            elif rule == Rule.MGD_NODE:
                g = self._correlate(g, delta_c, s, base.inputs[layer].repeat_interleave(copies, 0))
            else:  # ALR sign units: the copy's own (noisy) input
                g = self._correlate(g, delta_c, u.sign(s), u.sign(noisy.inputs[layer]))
            grads.append(g)
        return grads

    def _projection_grads(self, x: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
        cfg = self.cfg
        trace = self.forward(x)
        target = u.one_hot_target(labels, cfg.network.layers[-1], cfg.rule.target_on)
        self.last_loss_sum = int(u.loss_mse(trace.output, target).sum())
        ones = torch.ones(x.shape[0], dtype=torch.int64)
        grads = []
        for layer, rule in enumerate(self.rules):
            if self.projections[layer] is None:  # output layer: the delta rule
                error = trace.output - target
            else:
                local_target = self.projections[layer][labels]
                error = u.projection_error(rule.value, trace.y[layer], local_target, cfg.rule.dead_zone)
            gated = u.activation_gate(trace.q[layer], error, self.acts[layer])
            grads.append(self._correlate(torch.zeros_like(self.weights[layer]), ones, gated, trace.inputs[layer]))
        return grads

    def _update(self, grads: list[torch.Tensor]) -> None:
        num, rule = self.cfg.numerics, self.cfg.rule
        for layer, g in enumerate(grads):
            if self.momentum is not None:
                self.momentum[layer] = u.momentum_step(
                    self.momentum[layer], g, rule.momentum_shift, num.grad_bits, num.rounding, num.overflow
                )
                g = self.momentum[layer]
            self.weights[layer] = u.update_weights(
                self.weights[layer], g, lr_mult=self.lr_mult, lr_shift=self.lr_shifts[layer],
                weight_bits=num.weight_bits, rounding=num.rounding, overflow=num.overflow,
            )

    # -- state --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": "integer",
            "weights": [w.clone() for w in self.weights],
            "momentum": None if self.momentum is None else [m.clone() for m in self.momentum],
            "step": self.step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "integer":
            raise ValueError("not an integer-model state")
        shapes = [tuple(w.shape) for w in self.weights]
        if [tuple(w.shape) for w in state["weights"]] != shapes:
            raise ValueError(f"weight shapes in the state do not match the network {shapes}")
        self.weights = [w.clone().to(torch.int64) for w in state["weights"]]
        self.momentum = None if state["momentum"] is None else [m.clone() for m in state["momentum"]]
        self.step = int(state["step"])
