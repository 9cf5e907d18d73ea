"""perturbo.hdl: the accelerator's gateware (Amaranth).

:func:`generate` writes the Verilog of the accelerator for a configuration.
"""

from __future__ import annotations

from typing import Any


def generate(cfg: Any, out_dir: Any) -> Any:
    """Write ``accelerator.v`` for ``cfg`` into ``out_dir`` (see :mod:`.generate`)."""
    from .generate import generate as _generate

    return _generate(cfg, out_dir)
