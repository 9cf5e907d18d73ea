"""One cache for everything perturbo builds: generated Verilog, co-simulation harnesses,
cocotb testbench models and board bitstreams.

Everything lives under :func:`cache_root`, one directory (or file) per build, named by a
:func:`digest` of everything that made it.  A build appears under its name only when it
is complete: it is made in a private directory beside its final place and renamed into
place, under a lock, so that concurrent processes (the test suite's pytest-xdist workers,
two ``perturbo train`` runs of one configuration) build each thing once, wait for each
other, and never see half a build.  A build that raises leaves nothing behind; one whose
process was killed leaves its private directory, which the next build of the same thing
removes (:func:`cached_dir`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

__all__ = ["cache_root", "cached_dir", "cached_text", "digest"]


def cache_root() -> Path:
    """``$PERTURBO_CACHE`` when set, else the platform's user cache directory
    (``platformdirs``), else ``~/.cache/perturbo``."""
    if env := os.environ.get("PERTURBO_CACHE"):
        return Path(env)
    try:
        import platformdirs
    except ImportError:
        return Path.home() / ".cache" / "perturbo"
    return Path(platformdirs.user_cache_dir("perturbo"))


def digest(*parts: str | bytes) -> str:
    """16 hex digits of SHA-256 over ``parts`` (separated, so that ``("ab", "c")`` and
    ``("a", "bc")`` differ): the cache key of a build."""
    sha = hashlib.sha256()
    for part in parts:
        sha.update(part.encode() if isinstance(part, str) else part)
        sha.update(b"\0")
    return sha.hexdigest()[:16]


def _lock(dest: Path) -> FileLock:
    dest.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(dest.parent / f".{dest.name}.lock"))


def cached_dir(dest: Path, build: Callable[[Path], None], *, done: str) -> Path:
    """``dest``, built by ``build(work)`` unless it already holds ``done``.

    ``build`` fills the empty private directory ``work``; when it returns, ``work``
    (which must then hold ``done``) becomes ``dest``.  ``build`` may also move ``work``
    elsewhere itself (a failed board build is kept aside for its logs) and raise.
    """
    if (dest / done).exists():
        return dest
    with _lock(dest):
        if (dest / done).exists():  # another process built it while this one waited
            return dest
        _remove_abandoned(dest)
        work = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
        try:
            build(work)
            if not (work / done).exists():
                raise RuntimeError(f"the build of {dest.name} finished without {done}")
            if dest.exists():  # an incomplete directory left by older code
                shutil.rmtree(dest)
            work.rename(dest)
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)
    return dest


def _remove_abandoned(dest: Path) -> None:
    """Remove the private directories of ``dest``'s builds whose process was killed (a
    board build stopped by hand leaves 60 to 130 MB).  Called under ``dest``'s lock, which a
    process holds while it builds and the system releases when it dies, so no live build
    owns one of them.  Only names :func:`tempfile.mkdtemp` made for ``dest`` match: eight
    characters after ``.<name>-``, never another build's directory."""
    for stale in dest.parent.glob(f".{dest.name}-" + "?" * 8):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)


def cached_text(path: Path, make: Callable[[], str]) -> str:
    """The text cached at ``path``, made by ``make()`` and written atomically if absent."""
    if path.exists():
        return path.read_text()
    with _lock(path):
        if path.exists():
            return path.read_text()
        text = make()
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
        with os.fdopen(fd, "w") as file:
            file.write(text)
        os.replace(tmp, path)
    return text
