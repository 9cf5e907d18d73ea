"""perturbo.host: the host side of the link, over any transport.

:mod:`.protocol` encodes and checks frames (docs/protocol.md), :mod:`.link` talks them
over a pyserial transport (a board's UART, the co-simulation's socket or pty), and
:mod:`.accelerator` drives the accelerator through its registers and memories as a
training backend.  The gateware they talk to is in :mod:`perturbo.hdl`; the
co-simulation that stands in for a board is in :mod:`perturbo.sim`.
"""
