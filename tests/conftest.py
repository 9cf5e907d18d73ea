"""Test-session hooks: the longest test modules first.

pytest-xdist hands the two workers tests in collection order, so a long module that
comes last alphabetically (the co-simulation runs of ``test_verilator_backend.py`` and
``test_verify.py``) left one worker busy for minutes after the other ran out of work.
Running the longest first and the many short ones last lets the workers finish
together (longest-processing-time-first scheduling): the CI's wall time is then close to
half its CPU time.
"""

from __future__ import annotations

import pytest

#: Modules by their share of the CI's time (the ``--durations`` of a CI run), longest first.
LONGEST_FIRST = (
    "test_boards.py",  # the iCEBreaker build, about 6 minutes of one worker
    "test_hdl_accelerator.py",
    "test_verilator_backend.py",
    "test_hdl_forward.py",
    "test_verify.py",
    "test_estimate.py",
    "test_hdl_correlation.py",
    "test_waves.py",
    "test_serial_pty.py",
    "test_hostlink.py",
    "test_failures.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order within a module kept
