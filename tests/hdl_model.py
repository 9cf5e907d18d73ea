"""Golden references the datapath testbenches compare with, built from golden.units only."""

from __future__ import annotations

import torch

from perturbo.config import Config, Rule
from perturbo.golden import units as u
from perturbo.golden.integer import layer_layouts
from perturbo.hdl.geometry import Geometry
from perturbo.verify import first_difference  # noqa: F401  (the testbenches' name for it)


def pass_outputs(cfg: Config, weights: list[torch.Tensor], x: torch.Tensor, *, perturb: bool,
                 key: int, negate: bool, delta: int,
                 injections: dict[int, torch.Tensor] | None = None
                 ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(q, y)`` of every layer for one pass of one sample (docs/numerics.md §5).

    ``injections`` maps a layer to the values added to its accumulators (node
    perturbation or ALR noise, as the forward engine's ``inject`` port delivers them).
    """
    num = cfg.numerics
    layouts = layer_layouts(cfg)
    rules = cfg.layer_rules()
    shifts = cfg.network.layer_shifts
    n = cfg.network.n_layers
    out = []
    h = x.to(torch.int64)
    for li in range(n):
        w8 = u.mac_weights(weights[li], num.weight_bits)
        if perturb and rules[li] == Rule.MGD_WEIGHT:
            lay = layouts[li]
            s = u.weight_signs(u.draw(torch.tensor(key), lay.sign_word_indices()), lay.n_out)
            s = -s if negate else s
            w8 = u.perturb_weights(w8, delta * s, num.overflow)
        q, h = u.forward_layer(h, w8, shift=shifts[li],
                               act=cfg.network.activation if li < n - 1 else None,
                               acc_bits=num.acc_bits, rounding=num.rounding,
                               overflow=num.overflow,
                               injection=(injections or {}).get(li))
        out.append((q, h))
    return out


def sign_writes(cfg: Config, geo: Geometry, key: int, bank: int
                ) -> list[tuple[int, int, int, int]]:
    """``(bank, row, bits, lanes)`` the forward engine writes to the sign memory in a
    perturbed pass with ``key``, in order: the rows of the ``mgd-weight`` layers, bit ``k``
    of ``bits`` set where lane ``k``'s weight has ``s = -1``, for the lanes set in ``lanes``
    (those holding a weight; the others are never read)."""
    bits = [(u.weight_signs(u.draw(torch.tensor(key), lay.sign_word_indices()), lay.n_out) < 0)
            .to(torch.int64) for lay in layer_layouts(cfg)]
    image = geo.to_image(bits, geo.rows).reshape(-1, geo.lanes).tolist()
    return [(bank, lay.row_base + g * lay.tokens + t,
             sum(b << k for k, b in enumerate(image[lay.row_base + g * lay.tokens + t])),
             lay.synapse_mask(g, t))
            for lay in geo.layers if lay.rule == Rule.MGD_WEIGHT
            for g in range(lay.groups) for t in range(lay.tokens)]


def weight_rows(geo: Geometry, weights: list[torch.Tensor]) -> list[list[int]]:
    """The lane-memory image of per-layer matrices: ``rows[row][lane]`` (0 in empty lanes)."""
    return geo.to_image(weights, geo.weight_depth).reshape(-1, geo.lanes).tolist()


def matrices_from_rows(geo: Geometry, rows: list[list[int]]) -> list[torch.Tensor]:
    """Per-layer matrices from a lane-memory image (the inverse of :func:`weight_rows`)."""
    return [torch.from_numpy(w) for w in geo.from_image([v for row in rows for v in row])]
