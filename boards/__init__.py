"""perturbo.boards: the accelerator on FPGA boards, built with the all-pip yowasp toolchain.

- :mod:`.top`: :class:`BoardTop` (the accelerator behind a UART host link, on a board's
  pins) and the supported boards (:data:`BOARDS`);
- :mod:`.build`: :func:`build`, cached board builds that return a :class:`SynthReport`;
- :mod:`.report`: :class:`SynthReport` and the yosys/nextpnr parsers behind it.

``perturbo synth CONFIG --board icebreaker`` is the command line; ``docs/boards.md``
has the measured figures.
"""

from __future__ import annotations

from .build import build, build_plan, default_out_dir, tool_env
from .report import ClockTiming, ResourceUse, SynthReport
from .top import BOARDS, Board, BoardTop, board_names, get_board, make_platform

__all__ = [
    "BOARDS",
    "Board",
    "BoardTop",
    "ClockTiming",
    "ResourceUse",
    "SynthReport",
    "board_names",
    "build",
    "build_plan",
    "default_out_dir",
    "get_board",
    "make_platform",
    "tool_env",
]
