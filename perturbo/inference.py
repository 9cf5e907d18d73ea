"""Inference of an exported network in plain torch: :class:`ExportedMLP`.

This file imports nothing but torch, so it can be copied next to an exported ``.pt``
or ``.npz`` file and used without perturbo (``perturbo export`` writes both,
``perturbo.export`` reads them back into this module).

An integer export (the bit-exact accelerator, docs/numerics.md) runs in float64,
where every value of the integer forward pass is exact: inputs are INT8 (0..127, or
-127..127 centred),
``w8`` INT8, a dot product over at most 4 097 terms of at most 2^14 stays far
below 2^53, and the rounding shift is a division by a power of two followed by
``floor``. Each layer is::

    z = [h, 127] @ weight.T                  # weight: float64 copy of w8, bias last
    q = floor((z + 2^(shift-1)) / 2^shift)    # half-up; "floor" rounding drops the 2^(shift-1)
    q = clip(q, -128, 127)                    # saturate; "wrap" keeps the low 8 bits instead
    h = phi(q)                                # relu, leaky-relu (floor(q / 8) below 0), hard-sigmoid

and the output layer is linear (``y = q``): the scores are the INT8 outputs of the
accelerator, as floats. The accumulator is not narrowed: the configuration refuses
accumulator widths that a dot product could overflow, so narrowing is a no-op here.

A float export (a ``bp`` or ``--float`` run) is the float reference's forward pass:
inputs ``x / 128`` (float32), ``z = [h, 1] @ weight.T``, the float activation
(leaky slope 1/8, hard-sigmoid ``clamp(z + 0.5, 0, 1)``) on hidden layers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["BIAS_INPUT", "KINDS", "ExportedMLP"]

#: The constant input of the bias column, per kind of export.
BIAS_INPUT = {"integer": 127.0, "float": 1.0}
#: What an export holds: the integer accelerator or a float reference.
KINDS = tuple(BIAS_INPUT)
ACTIVATIONS = ("relu", "leaky-relu", "hard-sigmoid")
ROUNDINGS = ("half-up", "floor")
OVERFLOWS = ("saturate", "wrap")


class ExportedMLP(torch.nn.Module):
    """The exported network: a float module whose scores equal the trained model's.

    Parameters
    ----------
    weights : sequence of torch.Tensor
        One ``(n_out, n_in + 1)`` matrix per layer, the bias weight in the last column:
        ``w8`` as float64 for an integer export, the float32 weights for a float one.
    kind : {"integer", "float"}
        Whether the layers requantise as the accelerator does (module docstring).
    activation : {"relu", "leaky-relu", "hard-sigmoid"}
        Hidden-layer activation; the output layer is linear.
    shifts : sequence of int, optional
        Requantisation shift per layer (integer exports).
    rounding : {"half-up", "floor"}
        Rounding of the requantisation shift (integer exports).
    overflow : {"saturate", "wrap"}
        How the requantised value is narrowed to INT8 (integer exports).

    Notes
    -----
    ``forward`` takes inputs in the INT8 input format (values 0..127, or -127..127 for
    centred inputs, the export's ``input.offsets`` already subtracted; any dtype) and
    returns ``(n, classes)`` scores; the prediction is their argmax (the first index
    on ties, as the host takes it).
    """

    def __init__(
        self,
        weights: Sequence[torch.Tensor],
        *,
        kind: str,
        activation: str,
        shifts: Sequence[int] = (),
        rounding: str = "half-up",
        overflow: str = "saturate",
    ) -> None:
        super().__init__()
        if kind not in KINDS or activation not in ACTIVATIONS or rounding not in ROUNDINGS \
                or overflow not in OVERFLOWS:
            raise ValueError(f"unknown kind, activation, rounding or overflow: {kind, activation, rounding, overflow}")
        if kind == "integer" and len(shifts) != len(weights):
            raise ValueError(f"{len(weights)} layers but {len(shifts)} shifts")
        dtype = torch.float64 if kind == "integer" else weights[0].dtype
        self.weights = torch.nn.ParameterList(
            torch.nn.Parameter(w.detach().to(dtype).clone(), requires_grad=False) for w in weights
        )
        self.kind, self.activation = kind, activation
        self.shifts, self.rounding, self.overflow = [int(s) for s in shifts], rounding, overflow

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.weights[0].dtype
        # a float export reads the INT8 pixel p as p / 128, exactly as the float reference does
        h = x.to(dtype) if self.kind == "integer" else x.to(dtype) / 128.0
        last = len(self.weights) - 1
        for k, w in enumerate(self.weights):
            bias = torch.full_like(h[..., :1], BIAS_INPUT[self.kind])
            z = torch.cat([h, bias], dim=-1) @ w.transpose(-1, -2)
            if self.kind == "integer":
                z = self._requantise(z, self.shifts[k])
            h = z if k == last else self._activate(z)
        return h

    def _requantise(self, z: torch.Tensor, shift: int) -> torch.Tensor:
        """``narrow8(round_shift(acc, shift))`` on exact float64 integers."""
        if shift > 0:
            if self.rounding == "half-up":
                z = z + 2.0 ** (shift - 1)
            z = torch.floor(z / 2.0**shift)
        if self.overflow == "saturate":
            return z.clamp(-128.0, 127.0)
        return z - 256.0 * torch.floor((z + 128.0) / 256.0)

    def _activate(self, z: torch.Tensor) -> torch.Tensor:
        integer = self.kind == "integer"
        if self.activation == "relu":
            return torch.relu(z)
        if self.activation == "leaky-relu":
            # the accelerator's q >> 3 is floor(q / 8); the float reference's slope is 1/8
            return torch.where(z >= 0, z, torch.floor(z / 8.0)) if integer else torch.where(z > 0, z, z * 0.125)
        return (z + 64.0).clamp(0.0, 127.0) if integer else torch.clamp(z + 0.5, 0.0, 1.0)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Class indices: the argmax of :meth:`forward`."""
        return self.forward(x).argmax(dim=-1)
