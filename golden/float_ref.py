"""Float reference learning rules: BP, MGD, LR, ALR, hybrids and target projection.

These are plain-torch float versions of the rules in DESIGN.md section 1.  They
show how much the integer hardware rule loses, and they let the estimators be
checked against the true (autograd) gradient by cosine similarity.

Conventions shared by every function here
-----------------------------------------
* A network is a list of weight matrices ``params[l]`` of shape
  ``(n_out, n_in + 1)``; the last column is the bias, whose input is the
  constant 1.0.  Layer ``l`` computes ``z = W [x; 1]`` and ``y = phi(z)``; the
  output layer is linear.
* Inputs to the estimator functions are *float* tensors (the INT8 inputs 0..127
  divided by 128, see :func:`to_float`).  :class:`FloatModel` takes the integer
  inputs and converts them itself.
* The loss of one sample is ``L = 1/2 * sum_k (y_k - t_k)^2`` against a one-hot
  target whose label entry is ``target_on`` (``cfg.rule.target_on / 128``) and
  whose other entries are 0; the cost of a batch is the mean of ``L`` over its
  samples.  With the factor 1/2 the output layer's error is exactly ``y - t``.
* Every estimator returns one tensor per layer, shaped like ``params[l]``, that
  estimates ``dC/dW`` (the direction to *descend*: ``W -= lr * G``).

Perturbative estimators
-----------------------
All perturbative rules (MGD weight / node, LR, ALR and the ES weight-noise LR)
share one implementation, :func:`perturbative_grad`: every perturbation ``p``
injects noise ``nu`` into every layer at once (into the weights or into the
pre-activations, per layer), and each sample's loss difference
``dC = L(perturbed) - L(clean)`` is correlated with the layer's own noise:

* weight noise (``mgd-weight``, ``es``):   ``G = mean_p mean_n dC * nu / s^2``
* node noise (``mgd-node``, ``lr``):       ``G_ij = mean_p mean_n dC * nu_i * x_j / s^2``
* sign units (``alr``):                    ``G_ij = mean_p mean_n dC * sign(nu_i) * sign(x_j)``

where ``s^2`` is the variance of one noise entry (``delta^2`` for the Bernoulli
``+-delta`` of MGD, ``sigma^2`` for Gaussian noise ``sigma * eps``).  For MGD this
is the **2023 normalisation** ``G = 1/(K delta^2) sum_t dC(t) theta(t)``; for LR it
is the likelihood-ratio estimator ``mean L x_j eps_i / sigma`` (with noise
``sigma * eps``).  ``x_j`` is the layer input of the same noisy pass for LR and
ALR and of the clean (baseline) pass for MGD node perturbation, as in
docs/numerics.md.  The loss difference is taken per sample; for weight noise
(shared by a whole batch) this equals the batch-cost difference
``C(W + theta) - C(W)``.  Antithetic pairs use ``nu`` and ``-nu`` in
consecutive copies.

:class:`FloatModel` lays the perturbations out as docs/numerics.md does: every
sample of a step gets ``copies`` perturbed passes of its own (antithetic pairs).

Everything is vectorised over perturbations and samples with batched matmuls;
the only Python loops are over layers and over chunks of perturbations (which
bound memory).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Literal

import torch

from perturbo.backend import OneStepAtATime
from perturbo.config import TARGET_PROJECTION_RULES, Activation, Config, Rule

__all__ = [
    "LEAKY_SLOPE",
    "NODE_MODES",
    "PERTURBATIVE_MODES",
    "WEIGHT_MODES",
    "FloatModel",
    "activation_derivative",
    "apply_activation",
    "batch_cost",
    "bp_grad",
    "cosine_similarity",
    "forward",
    "init_weights",
    "make_feedback_matrices",
    "one_hot_target",
    "per_sample_loss",
    "perturbative_grad",
    "target_projection_grad",
    "to_float",
]

#: Elements (per tensor kind) one chunk of perturbations may hold in perturbative_grad.
_CHUNK_ELEMENTS = 2**24

#: Negative-side slope of the leaky ReLU (a shift by 3 in hardware).
LEAKY_SLOPE = 1.0 / 8.0

#: Per-layer modes of :func:`perturbative_grad` that perturb the weights.
WEIGHT_MODES = ("mgd-weight", "es")
#: Per-layer modes of :func:`perturbative_grad` that perturb the pre-activations.
NODE_MODES = ("mgd-node", "lr", "alr")
#: Every per-layer mode of :func:`perturbative_grad`.
PERTURBATIVE_MODES = WEIGHT_MODES + NODE_MODES

ActivationName = Activation | Literal["relu", "leaky-relu", "hard-sigmoid"]
TPVariant = Literal["drtp", "tpsgd-l1", "tpsgd-l2"]


# -- forward pass and loss ------------------------------------------------------------


def to_float(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Convert INT8-format inputs (0..127) to floats in ``[0, 1)`` by dividing by 128.

    Parameters
    ----------
    x : torch.Tensor
        Integer (or already integral float) inputs of any shape.
    dtype : torch.dtype
        Floating dtype of the result.

    Returns
    -------
    torch.Tensor
        ``x / 128`` as ``dtype``.
    """
    return x.to(dtype) / 128.0


def apply_activation(z: torch.Tensor, activation: ActivationName) -> torch.Tensor:
    """Hidden-layer nonlinearity.

    Parameters
    ----------
    z : torch.Tensor
        Pre-activations.
    activation : Activation or str
        ``relu``; ``leaky-relu`` (slope 1/8 below zero); ``hard-sigmoid``
        (``clamp(z + 0.5, 0, 1)``, the float twin of the INT8 ``clamp(q + 64, 0, 127)``).

    Returns
    -------
    torch.Tensor
        ``phi(z)``.
    """
    act = Activation(activation)
    if act is Activation.RELU:
        return torch.relu(z)
    if act is Activation.LEAKY_RELU:
        return torch.where(z > 0, z, z * LEAKY_SLOPE)
    return torch.clamp(z + 0.5, 0.0, 1.0)


def activation_derivative(z: torch.Tensor, activation: ActivationName) -> torch.Tensor:
    """Derivative ``phi'(z)`` of :func:`apply_activation` (0 at the kinks' flat side).

    Parameters
    ----------
    z : torch.Tensor
        Pre-activations.
    activation : Activation or str
        As for :func:`apply_activation`.

    Returns
    -------
    torch.Tensor
        ``phi'(z)``, same shape and dtype as ``z``.
    """
    act = Activation(activation)
    if act is Activation.RELU:
        return (z > 0).to(z.dtype)
    if act is Activation.LEAKY_RELU:
        return torch.where(z > 0, torch.ones_like(z), torch.full_like(z, LEAKY_SLOPE))
    return torch.where((z > -0.5) & (z < 0.5), torch.ones_like(z), torch.zeros_like(z))


def _with_bias(x: torch.Tensor) -> torch.Tensor:
    """Append the constant bias input 1.0 as a last feature."""
    return torch.cat([x, torch.ones_like(x[..., :1])], dim=-1)


def forward(
    params: Sequence[torch.Tensor],
    x: torch.Tensor,
    activation: ActivationName = Activation.RELU,
) -> torch.Tensor:
    """Output scores of the MLP.

    Parameters
    ----------
    params : sequence of torch.Tensor
        Weight matrices ``(n_out, n_in + 1)``, bias in the last column.
    x : torch.Tensor
        Float inputs ``(..., n_in)``.
    activation : Activation or str
        Hidden-layer activation; the output layer is linear.

    Returns
    -------
    torch.Tensor
        Scores ``(..., classes)``.
    """
    h = x
    for k, w in enumerate(params):
        h = _with_bias(h) @ w.transpose(-1, -2)
        if k < len(params) - 1:
            h = apply_activation(h, activation)
    return h


def one_hot_target(
    labels: torch.Tensor, n_classes: int, target_on: float, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """One-hot targets with ``target_on`` at the label and 0 elsewhere.

    Parameters
    ----------
    labels : torch.Tensor
        Class indices, any shape.
    n_classes : int
        Number of outputs.
    target_on : float
        Value of the label's entry (``cfg.rule.target_on / 128``).
    dtype : torch.dtype
        Dtype of the result.

    Returns
    -------
    torch.Tensor
        ``labels.shape + (n_classes,)``.
    """
    return torch.nn.functional.one_hot(labels.long(), n_classes).to(dtype) * target_on


def per_sample_loss(y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``L = 1/2 * sum_k (y_k - t_k)^2`` over the last axis.

    Parameters
    ----------
    y : torch.Tensor
        Output scores ``(..., classes)``.
    target : torch.Tensor
        Targets broadcastable to ``y``.

    Returns
    -------
    torch.Tensor
        Losses of shape ``y.shape[:-1]``.
    """
    return 0.5 * (y - target).square().sum(dim=-1)


def batch_cost(
    params: Sequence[torch.Tensor],
    x: torch.Tensor,
    labels: torch.Tensor,
    *,
    activation: ActivationName = Activation.RELU,
    target_on: float = 0.75,
) -> torch.Tensor:
    """Mean per-sample loss ``C`` of a batch (a 0-d tensor, differentiable in ``params``).

    Parameters
    ----------
    params : sequence of torch.Tensor
        Weight matrices.
    x : torch.Tensor
        Float inputs ``(n, n_in)``.
    labels : torch.Tensor
        Class indices ``(n,)``.
    activation : Activation or str
        Hidden activation.
    target_on : float
        Target value of the label's output.

    Returns
    -------
    torch.Tensor
        The batch cost.
    """
    y = forward(params, x, activation)
    t = one_hot_target(labels, y.shape[-1], target_on, y.dtype)
    return per_sample_loss(y, t).mean()


def cosine_similarity(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    """Cosine similarity of two per-layer gradient lists, flattened and concatenated.

    Parameters
    ----------
    a, b : sequence of torch.Tensor
        Gradients with matching shapes.

    Returns
    -------
    float
        ``<a, b> / (|a| |b|)``.
    """
    fa = torch.cat([t.reshape(-1) for t in a]).double()
    fb = torch.cat([t.reshape(-1) for t in b]).double()
    return float(fa @ fb / (fa.norm() * fb.norm()).clamp_min(1e-300))


def init_weights(
    layers: Sequence[int],
    generator: torch.Generator,
    init_scale: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> list[torch.Tensor]:
    """He-normal weights times ``init_scale``; the bias column starts at zero.

    Layer by layer, ``randn(n_out, n_in) * sqrt(2 / n_in) * init_scale`` is drawn
    from ``generator`` and a zero bias column is appended.

    Parameters
    ----------
    layers : sequence of int
        Widths from the input to the output.
    generator : torch.Generator
        Source of the draws (advanced).
    init_scale : float
        Multiplier of the He-normal standard deviation.
    dtype : torch.dtype
        Dtype of the weights.

    Returns
    -------
    list of torch.Tensor
        One ``(n_out, n_in + 1)`` matrix per layer.
    """
    out = []
    for n_in, n_out in zip(layers[:-1], layers[1:], strict=True):
        w = torch.randn(n_out, n_in, generator=generator, dtype=torch.float64)
        w = w * (2.0 / n_in) ** 0.5 * init_scale
        out.append(torch.cat([w, torch.zeros(n_out, 1, dtype=torch.float64)], dim=1).to(dtype))
    return out


# -- true gradient ----------------------------------------------------------------------


def bp_grad(
    params: Sequence[torch.Tensor],
    x: torch.Tensor,
    labels: torch.Tensor,
    *,
    activation: ActivationName = Activation.RELU,
    target_on: float = 0.75,
) -> list[torch.Tensor]:
    """True gradient ``dC/dW`` of the batch cost, by autograd (backpropagation).

    Parameters
    ----------
    params, x, labels, activation, target_on
        As for :func:`batch_cost` (``params`` is not modified).

    Returns
    -------
    list of torch.Tensor
        One gradient per layer, shaped like ``params``.
    """
    leaves = [w.detach().clone().requires_grad_(True) for w in params]
    with torch.enable_grad():
        cost = batch_cost(leaves, x, labels, activation=activation, target_on=target_on)
        grads = torch.autograd.grad(cost, leaves)
    return [g.detach() for g in grads]


# -- perturbative estimators ------------------------------------------------------------


def _draw(
    mode: str, shape: tuple[int, ...], generator: torch.Generator, scale: float, dtype: torch.dtype
) -> torch.Tensor:
    """Noise of one layer: Bernoulli ``+-scale`` for the MGD modes, else ``scale * N(0, 1)``."""
    if mode.startswith("mgd"):
        s = torch.randint(0, 2, shape, generator=generator, dtype=torch.int8)
        return (s.to(dtype) * 2.0 - 1.0) * scale
    return torch.randn(shape, generator=generator, dtype=dtype) * scale


def _mode_scale(mode: str, delta: float, sigma: float, weight_sigma: float) -> float:
    if mode.startswith("mgd"):
        return delta
    return weight_sigma if mode == "es" else sigma


def perturbative_grad(
    params: Sequence[torch.Tensor],
    x: torch.Tensor,
    labels: torch.Tensor,
    generator: torch.Generator,
    modes: Sequence[str],
    *,
    copies: int = 1,
    delta: float = 0.01,
    sigma: float = 0.1,
    weight_sigma: float = 0.01,
    antithetic: bool = False,
    baseline: bool = True,
    activation: ActivationName = Activation.RELU,
    target_on: float = 0.75,
    chunk_size: int = 1024,
) -> tuple[list[torch.Tensor], float]:
    """Estimate ``dC/dW`` from loss differences under per-layer perturbations.

    Each batch of ``x`` is evaluated once clean and ``copies`` times perturbed;
    every perturbation perturbs all layers at once, layer ``l`` by ``modes[l]``:

    ``mgd-weight``
        Bernoulli ``theta = +-delta`` per weight (one draw per perturbation,
        shared by its batch); ``G = mean_p dC_p theta_p / delta^2`` (2023
        normalisation of MGD).
    ``mgd-node``
        Bernoulli ``theta = +-delta`` per neuron added to ``z`` (shared by the
        batch); ``G_kj = mean_p mean_n dC_pn theta_pk x0_pnj / delta^2`` with
        ``x0`` the layer input of the clean (baseline) pass.
    ``lr``
        Gaussian ``sigma * eps`` per neuron, per sample and per copy, added to
        ``z``; ``G_ij = mean dC x_j eps_i / sigma`` (likelihood ratio), ``x`` the
        layer input of the same noisy copy.
    ``alr``
        The same noise; ``G_ij = mean dC sign(x_j) sign(eps_i)`` (approximated
        likelihood ratio; not scale-matched to LR, its unit is the loss).
    ``es``
        Gaussian ``weight_sigma * eps`` per weight (shared by the batch);
        ``G = mean dC eps / weight_sigma`` (weight-perturbation LR, ES-style).

    With ``x`` shaped ``(S, 1, n_in)`` every sample has perturbations of its
    own, which is the layout of docs/numerics.md section 6.

    Parameters
    ----------
    params : sequence of torch.Tensor
        Weight matrices (not modified).
    x : torch.Tensor
        Float inputs: ``(B, n_in)`` for one batch, or ``(T, B, n_in)`` for ``T``
        batches.  The estimate averages over all ``T * copies`` perturbations.
    labels : torch.Tensor
        Class indices ``(B,)`` or ``(T, B)``.
    generator : torch.Generator
        Source of all noise (advanced).
    modes : sequence of str
        One of :data:`PERTURBATIVE_MODES` per layer.
    copies : int
        Perturbations per batch.
    delta : float
        MGD amplitude (``mgd-weight``, ``mgd-node``).
    sigma : float
        Node noise scale (``lr``, ``alr``).
    weight_sigma : float
        Weight noise scale (``es``).
    antithetic : bool
        Antithetic pairs as in docs/numerics.md: copy ``m`` of a batch uses draw
        ``m >> 1`` with sign ``+1`` for even ``m`` and ``-1`` for odd ``m`` (an
        odd last copy has no twin).
    baseline : bool
        Subtract each sample's clean loss (``dC = L - L0``); otherwise use ``L``.
    activation : Activation or str
        Hidden activation.
    target_on : float
        Target value of the label's output.
    chunk_size : int
        Perturbations evaluated at once, in whole batches (at least one batch);
        fewer when they would hold more than ``2**24`` elements of one kind.
        The noise is drawn chunk by chunk, layer by layer, so the draws depend
        on the chunking (which depends only on the shapes and ``chunk_size``).

    Returns
    -------
    grads : list of torch.Tensor
        One estimate per layer, shaped like ``params``.
    loss : float
        Mean clean (baseline) loss over all samples.
    """
    n_layers = len(params)
    if len(modes) != n_layers:
        raise ValueError(f"got {len(modes)} modes for {n_layers} layers")
    bad = [m for m in modes if m not in PERTURBATIVE_MODES]
    if bad:
        raise ValueError(f"unknown perturbative modes {bad}; allowed: {PERTURBATIVE_MODES}")
    if copies < 1:
        raise ValueError("copies must be at least 1")
    if x.dim() == 2:
        x, labels = x.unsqueeze(0), labels.unsqueeze(0)
    n_batches, batch = x.shape[0], x.shape[1]
    dtype = params[0].dtype
    x = x.to(dtype)
    params = [w.detach() for w in params]
    n_classes = params[-1].shape[0]
    targets = one_hot_target(labels, n_classes, target_on, dtype)  # (T, B, classes)
    scales = [_mode_scale(m, delta, sigma, weight_sigma) for m in modes]
    # antithetic copies: copy m uses draw m >> 1 with sign (-1)^m
    copy_ids = torch.arange(copies)
    n_draws = (copies + 1) // 2 if antithetic else copies
    draw_of_copy = copy_ids // 2 if antithetic else copy_ids
    sign_of_copy = (1 - 2 * (copy_ids % 2)) if antithetic else torch.ones(copies, dtype=torch.long)
    sign_of_copy = sign_of_copy.to(dtype)

    with torch.no_grad():
        # clean pass: baseline losses, and the layer inputs mgd-node correlates with
        clean_inputs: list[torch.Tensor] = []
        h = x
        for k, w in enumerate(params):
            clean_inputs.append(_with_bias(h))
            h = clean_inputs[-1] @ w.T
            if k < n_layers - 1:
                h = apply_activation(h, activation)
        loss0 = per_sample_loss(h, targets)  # (T, B)

        # whole batches per chunk, bounded by chunk_size perturbations and by memory
        per_pert = max(
            max(w.numel() if m in WEIGHT_MODES else batch * w.shape[0], batch * w.shape[1])
            for w, m in zip(params, modes, strict=True)
        )
        per_chunk = min(chunk_size, _CHUNK_ELEMENTS // per_pert)
        batches_per_chunk = max(1, per_chunk // copies)
        grads = [torch.zeros_like(w) for w in params]
        for t0 in range(0, n_batches, batches_per_chunk):
            t1 = min(n_batches, t0 + batches_per_chunk)
            nt, n = t1 - t0, (t1 - t0) * copies
            h = x[t0:t1].unsqueeze(1).expand(nt, copies, batch, x.shape[-1]).reshape(n, batch, -1)
            noises: list[torch.Tensor] = []
            inputs: list[torch.Tensor] = []
            for k, (w, mode) in enumerate(zip(params, modes, strict=True)):
                h1 = _with_bias(h)
                if mode in WEIGHT_MODES:
                    shape: tuple[int, ...] = tuple(w.shape)
                else:
                    shape = (1 if mode == "mgd-node" else batch, w.shape[0])
                draws = _draw(mode, (nt, n_draws, *shape), generator, scales[k], dtype)
                sgn = sign_of_copy.reshape(1, copies, *([1] * len(shape)))
                nu = (draws[:, draw_of_copy] * sgn).reshape(n, *shape)
                if mode in WEIGHT_MODES:
                    z = torch.bmm(h1, (w + nu).transpose(1, 2))
                else:
                    z = h1 @ w.T + nu
                noises.append(nu)
                inputs.append(h1)
                h = apply_activation(z, activation) if k < n_layers - 1 else z
            loss = per_sample_loss(h, _repeat_copies(targets[t0:t1], copies))  # (n, B)
            dc = loss - _repeat_copies(loss0[t0:t1], copies) if baseline else loss
            for k, mode in enumerate(modes):
                nu = noises[k]
                if mode in WEIGHT_MODES:
                    grads[k] += torch.einsum("p,poi->oi", dc.mean(dim=1), nu) / scales[k] ** 2
                    continue
                if mode == "alr":
                    err, inp = dc.unsqueeze(-1) * torch.sign(nu), torch.sign(inputs[k])
                elif mode == "mgd-node":
                    err = dc.unsqueeze(-1) * nu / scales[k] ** 2
                    inp = _repeat_copies(clean_inputs[k][t0:t1], copies)
                else:
                    err, inp = dc.unsqueeze(-1) * nu / scales[k] ** 2, inputs[k]
                err2, inp2 = err.reshape(-1, err.shape[-1]), inp.reshape(-1, inp.shape[-1])
                grads[k] += err2.T @ inp2 / batch
        grads = [g / (n_batches * copies) for g in grads]
    return grads, float(loss0.mean())


def _repeat_copies(t: torch.Tensor, copies: int) -> torch.Tensor:
    """``(nt, ...)`` -> ``(nt * copies, ...)``, each batch's entry repeated for its copies."""
    return t.unsqueeze(1).expand(t.shape[0], copies, *t.shape[1:]).reshape(-1, *t.shape[1:])


# -- target projection ------------------------------------------------------------------


def make_feedback_matrices(
    layers: Sequence[int],
    generator: torch.Generator,
    scale: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> list[torch.Tensor]:
    """Fixed random projection matrices ``B_l`` (classes x n_l), one per hidden layer.

    The entries are uniform on ``[-scale, scale)``, the float image of the
    hardware's INT8 projection entries (docs/numerics.md: a signed byte / 128).

    Parameters
    ----------
    layers : sequence of int
        Network widths from input to output.
    generator : torch.Generator
        Source of the draws (advanced).
    scale : float
        Multiplies the draws.
    dtype : torch.dtype
        Dtype of the matrices.

    Returns
    -------
    list of torch.Tensor
        ``len(layers) - 2`` matrices of shape ``(layers[-1], layers[l + 1])``.
    """
    out = []
    for n in layers[1:-1]:
        u = torch.rand(layers[-1], n, generator=generator, dtype=torch.float64)
        out.append(((u * 2.0 - 1.0) * scale).to(dtype))
    return out


def target_projection_grad(
    params: Sequence[torch.Tensor],
    x: torch.Tensor,
    labels: torch.Tensor,
    feedback: Sequence[torch.Tensor],
    *,
    variant: TPVariant = "drtp",
    activation: ActivationName = Activation.RELU,
    target_on: float = 0.75,
    dead_zone: float = 0.0,
) -> tuple[list[torch.Tensor], float]:
    """DRTP / tpSGD pseudo-gradients ``G_l = mean_n delta_l x_l^T`` (``W -= lr G``).

    Hidden layer ``l`` has the local target ``t_l = B_l^T y*`` with ``y*`` the
    unit one-hot label, i.e. the label's row of ``B_l``, and

    * ``drtp``:     ``delta_l = t_l * phi'(z_l)``
    * ``tpsgd-l1``: ``delta_l = -sign(t_l - y_l) * phi'(z_l)``, 0 where ``|t_l - y_l| <= dead_zone``
    * ``tpsgd-l2``: ``delta_l = -(t_l - y_l) * phi'(z_l)``

    The (linear) output layer uses its true delta-rule error ``y - t``, so its
    pseudo-gradient is the true gradient of its own weights.

    DRTP's hidden update does not depend on ``y``, so it only settles where
    ``phi'`` vanishes: use a saturating activation (``hard-sigmoid``).  With
    ReLU the hidden weights grow without bound and the network does not learn
    (measured on digits: 20-56 % with ReLU, 92-95 % with hard-sigmoid).
    tpSGD learns with ReLU.

    Parameters
    ----------
    params : sequence of torch.Tensor
        Weight matrices (not modified).
    x : torch.Tensor
        Float inputs ``(n, n_in)``.
    labels : torch.Tensor
        Class indices ``(n,)``.
    feedback : sequence of torch.Tensor
        ``B_l`` for every hidden layer, from :func:`make_feedback_matrices`.
    variant : {"drtp", "tpsgd-l1", "tpsgd-l2"}
        The rule.
    activation : Activation or str
        Hidden activation.
    target_on : float
        Target value of the label's output.
    dead_zone : float
        ``tpsgd-l1``: the hidden error is 0 where ``|t_l - y_l| <= dead_zone``
        (``rule.dead_zone / 128``; 0: the plain sign).

    Returns
    -------
    grads : list of torch.Tensor
        Pseudo-gradients shaped like ``params``.
    loss : float
        Mean loss of the forward pass.
    """
    if variant not in ("drtp", "tpsgd-l1", "tpsgd-l2"):
        raise ValueError(f"unknown target-projection variant {variant!r}")
    if len(feedback) != len(params) - 1:
        raise ValueError(f"need {len(params) - 1} feedback matrices, got {len(feedback)}")
    dtype = params[0].dtype
    with torch.no_grad():
        h = x.to(dtype)
        n = h.shape[0]
        y_star = one_hot_target(labels, params[-1].shape[0], target_on, dtype)
        grads = []
        for k, w in enumerate(params):
            h1 = _with_bias(h)
            z = h1 @ w.T
            if k == len(params) - 1:
                delta = z - y_star
                h = z
            else:
                y = apply_activation(z, activation)
                t = feedback[k][labels.long()]
                if variant == "drtp":
                    err = t
                elif variant == "tpsgd-l1":
                    err = -torch.sign(t - y)
                    if dead_zone:
                        err = torch.where((t - y).abs() > dead_zone, err, torch.zeros_like(err))
                else:
                    err = -(t - y)
                delta = err * activation_derivative(z, activation)
                h = y
            grads.append(delta.T @ h1 / n)
        loss = float(per_sample_loss(h, y_star).mean())
    return grads, loss


# -- the training backend ---------------------------------------------------------------

_RULE_MODES = {Rule.ALR: "alr", Rule.MGD_WEIGHT: "mgd-weight", Rule.MGD_NODE: "mgd-node"}


class FloatModel(OneStepAtATime):
    """Float reference implementing :class:`perturbo.backend.TrainingBackend`.

    The rule comes from ``cfg.layer_rules()`` (``cfg.rule.name``, or the
    per-layer hybrid ``cfg.rule.per_layer``); ``modes`` overrides the
    perturbative per-layer modes (e.g. ``["es", "alr"]`` or ``["lr"] * n``).

    One :meth:`train_step` consumes ``cfg.rule.samples_per_step`` =
    ``tau_theta * batch`` samples and makes one update:

    * ``bp`` and target projection: the (pseudo-)gradient of the mean loss
      over all of them.
    * perturbative rules: as docs/numerics.md section 6, every sample gets
      ``cfg.rule.copies`` perturbed passes of its own, in antithetic pairs
      (an odd last copy has no twin), and the estimate averages over all
      ``samples * copies`` perturbations.  With ``share_perturbation=True``
      each window of ``batch`` samples shares its perturbations instead
      (``tau_theta * copies`` perturbations per update, the MGD papers' layout).

    The update is ``optimizer.step()`` on the estimate, Adam with learning rate
    ``cfg.rule.float_lr`` unless told otherwise.  Weights start He-normal times
    ``cfg.network.init_scale`` (zero bias) from a ``torch.Generator`` seeded with
    ``cfg.seed``; the same generator then draws the feedback matrices (target
    projection) and all perturbations.

    Parameters
    ----------
    cfg : Config
        The configuration.
    optimizer : {"adam", "sgd"}
        Float optimizer.
    lr : float, optional
        Learning rate; default ``cfg.rule.float_lr``.  With Adam on digits
        (64-32-10) BP wants about 5e-3 (2e-3 .. 5e-3 all reach 96-97 %); 5e-2
        kills the ReLU network (chance accuracy).  ALR: about 3e-3; MGD weight
        perturbation: about 5e-4.
    momentum : float
        Momentum of ``sgd``.
    delta : float
        Float MGD amplitude (the config's ``delta`` is in hardware units).
    sigma : float
        Float node-noise scale for ALR/LR (the config's ``sigma`` is in hardware units).
    weight_sigma : float
        Float weight-noise scale of the ES mode.
    feedback_scale : float
        Scale of the target-projection matrices ``B_l``.
    modes : sequence of str, optional
        Per-layer perturbative modes overriding the config's rules.
    share_perturbation : bool
        One set of perturbations per window of ``batch`` samples instead of
        per sample.
    dtype : torch.dtype
        Float dtype of the weights.
    """

    #: no LR_MULT register: the float references' rate is ``cfg.rule.float_lr``
    lr_mult: int | None = None

    def __init__(
        self,
        cfg: Config,
        *,
        optimizer: Literal["adam", "sgd"] = "adam",
        lr: float | None = None,
        momentum: float = 0.0,
        delta: float = 0.01,
        sigma: float = 0.1,
        weight_sigma: float = 0.01,
        feedback_scale: float = 1.0,
        modes: Sequence[str] | None = None,
        share_perturbation: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.cfg = cfg
        self.delta = delta
        self.sigma = sigma
        self.weight_sigma = weight_sigma
        self.activation = cfg.network.activation
        self.target_on = cfg.rule.target_on / 128.0
        self.dead_zone = cfg.rule.dead_zone / 128.0
        self.rules = cfg.layer_rules()
        n_layers = cfg.network.n_layers
        if modes is not None:
            modes = list(modes)
            if len(modes) != n_layers:
                raise ValueError(f"got {len(modes)} modes for {n_layers} layers")
            bad = [m for m in modes if m not in PERTURBATIVE_MODES]
            if bad:
                raise ValueError(f"unknown perturbative modes {bad}; allowed: {PERTURBATIVE_MODES}")
            self.kind = "perturbative"
            self.modes: list[str] = modes
        elif all(r in _RULE_MODES for r in self.rules):
            self.kind = "perturbative"
            self.modes = [_RULE_MODES[r] for r in self.rules]
        elif all(r is Rule.BP for r in self.rules):
            self.kind, self.modes = "bp", []
        elif len(set(self.rules)) == 1 and self.rules[0] in TARGET_PROJECTION_RULES:
            self.kind, self.modes = "tp", []
        else:
            raise ValueError(f"unsupported per-layer rules {[r.value for r in self.rules]}")

        self.samples_per_step = cfg.rule.samples_per_step
        # perturbative layout: (windows, samples sharing a perturbation)
        self.window = cfg.rule.batch if share_perturbation else 1
        self.copies = cfg.rule.copies

        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.weights = [
            w.requires_grad_(True)
            for w in init_weights(cfg.network.layers, self.generator, cfg.network.init_scale, dtype)
        ]
        self.feedback = (
            make_feedback_matrices(cfg.network.layers, self.generator, feedback_scale, dtype)
            if self.kind == "tp"
            else []
        )
        self.lr = cfg.rule.float_lr if lr is None else lr
        if optimizer == "adam":
            self.optimizer: torch.optim.Optimizer = torch.optim.Adam(self.weights, lr=self.lr)
        elif optimizer == "sgd":
            self.optimizer = torch.optim.SGD(self.weights, lr=self.lr, momentum=momentum)
        else:
            raise ValueError(f"unknown optimizer {optimizer!r}; use 'adam' or 'sgd'")
        self.step = 0

    @property
    def params(self) -> list[torch.Tensor]:
        """Detached views of the current weights."""
        return [w.detach() for w in self.weights]

    def estimate(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[list[torch.Tensor], float]:
        """The rule's gradient estimate on float inputs, without updating.

        Parameters
        ----------
        x : torch.Tensor
            Float inputs ``(samples_per_step, n_in)``.
        labels : torch.Tensor
            Class indices ``(samples_per_step,)``.

        Returns
        -------
        grads : list of torch.Tensor
            The estimate (``W -= lr * G`` direction).
        loss : float
            Mean baseline loss.
        """
        params = self.params
        kw: dict[str, Any] = {"activation": self.activation, "target_on": self.target_on}
        if self.kind == "bp":
            grads = bp_grad(params, x, labels, **kw)
            return grads, float(batch_cost(params, x, labels, **kw))
        if self.kind == "tp":
            return target_projection_grad(
                params, x, labels, self.feedback, variant=self.rules[0].value,
                dead_zone=self.dead_zone, **kw
            )
        xb = x.reshape(-1, self.window, x.shape[-1])
        lb = labels.reshape(-1, self.window)
        return perturbative_grad(
            params, xb, lb, self.generator, self.modes, copies=self.copies, delta=self.delta,
            sigma=self.sigma, weight_sigma=self.weight_sigma, antithetic=True, **kw,
        )

    def train_step(self, x: torch.Tensor, labels: torch.Tensor) -> float:
        """One update on ``cfg.rule.samples_per_step`` INT8-format samples.

        Parameters
        ----------
        x : torch.Tensor
            Inputs ``(samples_per_step, n_in)``, values 0..127.
        labels : torch.Tensor
            Class indices ``(samples_per_step,)``.

        Returns
        -------
        float
            Mean loss of the baseline (clean) passes.
        """
        if x.shape[0] != self.samples_per_step or labels.shape[0] != self.samples_per_step:
            raise ValueError(
                f"train_step takes exactly {self.samples_per_step} samples, got {x.shape[0]}"
            )
        grads, loss = self.estimate(to_float(x, self.weights[0].dtype), labels)
        for w, g in zip(self.weights, grads, strict=True):
            w.grad = g.to(w.dtype)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return loss

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Float output scores ``(n, classes)`` for INT8-format inputs.

        Parameters
        ----------
        x : torch.Tensor
            Inputs ``(n, n_in)``, values 0..127.

        Returns
        -------
        torch.Tensor
            Scores; the prediction is their argmax.
        """
        with torch.no_grad():
            return forward(self.params, to_float(x, self.weights[0].dtype), self.activation)

    def state_dict(self) -> dict[str, Any]:
        """Weights, optimizer state, generator state, feedback matrices and step counter.

        Returns
        -------
        dict
            Deep copies; :meth:`load_state_dict` restores bit-exactly.
        """
        return {
            "weights": [w.detach().clone() for w in self.weights],
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "generator": self.generator.get_state().clone(),
            "feedback": [b.clone() for b in self.feedback],
            "step": self.step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict`.

        Parameters
        ----------
        state : dict
            As returned by :meth:`state_dict`.
        """
        with torch.no_grad():
            for w, v in zip(self.weights, state["weights"], strict=True):
                if w.shape != v.shape:
                    raise ValueError(
                        f"weight shape {tuple(v.shape)} does not match {tuple(w.shape)}"
                    )
                w.copy_(v)
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        self.generator.set_state(state["generator"].clone())
        self.feedback = [b.clone() for b in state["feedback"]]
        self.step = int(state["step"])
