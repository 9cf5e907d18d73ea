"""A behavioural Verilog model of the ECP5's MULT18X18D, for the configurations
:class:`perturbo.hdl.dsp.RegisteredProduct` instantiates.

Yosys ships the MULT18X18D only as a black box (``cells_bb_ecp5.v``: "FIXME: Create sim
models"), and Lattice's simulation library is not open, so this model is written from the
sysDSP usage guide (Lattice TN1267): ``P = A * B`` (each operand signed where
``SIGNEDA``/``SIGNEDB`` is high), with the A, B and output registers each either bypassed
(``REG_*_CLK = "NONE"``) or clocked by ``CLK0``, loading when ``CE0`` is high and cleared by
``RST0`` at a clock edge (``RESETMODE = "SYNC"``).  Any other parameter value makes the
model stop at time 0, so a change to the instance that the model does not cover fails the
test instead of passing unchecked.  It checks the instance's wiring (pin order, operand
extension, enables) against those documented semantics; the silicon's own behaviour
comes from nextpnr's and Trellis's MULT18X18D support, which the board builds use.
"""

from __future__ import annotations

WIDTH = 18

#: Parameters the model implements, and the values it accepts for each.
PARAMETERS = {
    **{f"REG_{reg}_CLK": ("NONE", "CLK0") for reg in ("INPUTA", "INPUTB", "OUTPUT")},
    **{f"REG_{reg}_CE": ("CE0",) for reg in ("INPUTA", "INPUTB", "INPUTC", "PIPELINE", "OUTPUT")},
    **{f"REG_{reg}_RST": ("RST0",) for reg in ("INPUTA", "INPUTB", "INPUTC", "PIPELINE", "OUTPUT")},
    "REG_INPUTC_CLK": ("NONE",),
    "REG_PIPELINE_CLK": ("NONE",),
    "CLK0_DIV": ("ENABLED",),
    "HIGHSPEED_CLK": ("NONE",),
    "GSR": ("ENABLED", "DISABLED"),
    "CAS_MATCH_REG": ("FALSE",),
    "SOURCEB_MODE": ("B_SHIFT",),
    "MULT_BYPASS": ("DISABLED",),
    "RESETMODE": ("SYNC",),
}


def mult18x18d_verilog() -> str:
    """The model's Verilog-2005 source."""
    a = [f"A{i}" for i in range(WIDTH)]
    b = [f"B{i}" for i in range(WIDTH)]
    c = [f"C{i}" for i in range(WIDTH)]
    p = [f"P{i}" for i in range(2 * WIDTH)]
    inputs = [*a, *b, *c, "SIGNEDA", "SIGNEDB", "SOURCEA", "SOURCEB", "CLK0", "CE0", "RST0"]
    lines = ["module MULT18X18D(" + ", ".join(inputs + p) + ");"]
    lines += [f"  input {name};" for name in inputs]
    lines += [f"  output {name};" for name in p]
    lines += [f'  parameter {name} = "{values[0]}";' for name, values in PARAMETERS.items()]
    lines.append("  initial begin")
    for name, values in PARAMETERS.items():
        accepted = " && ".join(f'{name} != "{v}"' for v in values)
        lines.append(f'    if ({accepted}) begin $display("MULT18X18D model: {name} not modelled"); '
                     "$finish; end")
    lines.append("  end")
    lines += [
        f"  wire [17:0] a = {{{', '.join(reversed(a))}}};",
        f"  wire [17:0] b = {{{', '.join(reversed(b))}}};",
        "  reg [17:0] a_reg = 0, b_reg = 0;",
        "  reg [35:0] p_reg = 0;",
        '  wire [17:0] a_in = REG_INPUTA_CLK == "CLK0" ? a_reg : a;',
        '  wire [17:0] b_in = REG_INPUTB_CLK == "CLK0" ? b_reg : b;',
        "  wire signed [36:0] a_ext = SIGNEDA ? {{19{a_in[17]}}, a_in} : {19'b0, a_in};",
        "  wire signed [36:0] b_ext = SIGNEDB ? {{19{b_in[17]}}, b_in} : {19'b0, b_in};",
        "  wire [36:0] product_full = a_ext * b_ext;",
        "  wire [35:0] product = product_full[35:0];",
        "  always @(posedge CLK0) begin",
        "    if (RST0) begin a_reg <= 0; b_reg <= 0; p_reg <= 0; end",
        "    else if (CE0) begin a_reg <= a; b_reg <= b; p_reg <= product; end",
        "  end",
        '  wire [35:0] p_out = REG_OUTPUT_CLK == "CLK0" ? p_reg : product;',
        *(f"  assign P{i} = p_out[{i}];" for i in range(2 * WIDTH)),
        "endmodule",
    ]
    return "\n".join(lines) + "\n"
