"""``perturbo gen CONFIG -o DIR``: write the accelerator's Verilog for one configuration.

:func:`generate` writes ``accelerator.v`` (top module :data:`TOP`), ``accelerator.vlt``
(the Verilator lint waivers, each with its reason) and ``accelerator.json`` (the
generation parameters, their hash and the register/space maps) into a directory.
``verilator --lint-only -Wall accelerator.vlt accelerator.v`` is clean.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from amaranth.back import verilog

from perturbo.config import Config

from .accelerator import Accelerator
from .bus import Space
from .geometry import Geometry, config_hash, generation_parameters
from .registers import register_map

__all__ = ["TOP", "generate", "LINT_WAIVERS"]

#: Name of the top module.
TOP = "perturbo_accelerator"

#: Verilator lint rules waived for the generated file, with the reason for each.
LINT_WAIVERS: dict[str, str] = {
    "UNUSEDSIGNAL": "Amaranth emits whole struct-typed signals (stream payloads, pipeline "
                    "tokens) of which some stages use only some fields; yosys removes the "
                    "unused bits, they are not logic that was forgotten",
    "UNUSEDPARAM": "Amaranth emits memory init parameters and constants it does not use",
    "DECLFILENAME": "all modules of the design are in one generated file, named after "
                    "the design rather than each module",
    "WIDTHEXPAND": "Amaranth's expressions are width-exact; operands are extended on "
                   "purpose in the generated code",
    "WIDTHTRUNC": "as WIDTHEXPAND: truncations in the generated code are explicit slices",
    "CASEINCOMPLETE": "Amaranth's case statements have a default assignment before the case",
    "PROCASSINIT": "Amaranth initialises registers in their declaration and assigns them "
                   "in processes; that is its reset-value convention",
}


def generate(cfg: Config, out_dir: str | Path) -> Path:
    """Write the accelerator for ``cfg`` into ``out_dir``; return the Verilog file's path.

    Raises
    ------
    ValueError
        The configuration asks for something this datapath does not run.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    top = Accelerator(cfg)
    text = verilog.convert(top, name=TOP, emit_src=False)
    path = out / "accelerator.v"
    path.write_text(text)
    waivers = ["`verilator_config", "// Lint waivers for the Amaranth-generated accelerator.v"]
    for rule, why in LINT_WAIVERS.items():
        waivers.append(f"// {rule}: {why}")
        waivers.append(f'lint_off -rule {rule} -file "*accelerator.v"')
    (out / "accelerator.vlt").write_text("\n".join(waivers) + "\n")
    geo = Geometry(cfg)
    info = {
        "top": TOP,
        "config_hash": config_hash(cfg),
        "generation": generation_parameters(cfg),
        "lanes": geo.lanes,
        "rows": geo.rows,
        "weight_depth": geo.weight_depth,
        "sample_depth": geo.sample_depth,
        "spaces": {s.name: int(s) for s in Space},
        "registers": [asdict(info) for info in register_map(cfg)],
        "layers": [{"n_in": lay.n_in, "n_out": lay.n_out, "row_base": lay.row_base,
                    "groups": lay.groups, "split": lay.split, "tokens": lay.tokens} for lay in geo.layers],
    }
    (out / "accelerator.json").write_text(json.dumps(info, indent=2) + "\n")
    return path
