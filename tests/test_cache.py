"""The build cache: a build appears whole or not at all, and a killed build's leftovers go."""

from __future__ import annotations

from pathlib import Path

import pytest

from perturbo.cache import cached_dir


def _fill(work: Path) -> None:
    (work / "done").write_text("built")


def test_a_killed_builds_directory_is_removed_by_the_next_build(tmp_path: Path) -> None:
    dest = tmp_path / "board-0123456789abcdef"
    # what a build killed mid-way leaves: its private directory (mkdtemp's eight characters)
    abandoned = tmp_path / ".board-0123456789abcdef-k3_x9q2a"
    (abandoned / "nextpnr").mkdir(parents=True)
    # another build's private directory, whose name starts with this one's: left alone
    other = tmp_path / ".board-0123456789abcdef-extra-k3_x9q2a"
    other.mkdir()
    assert cached_dir(dest, _fill, done="done") == dest
    assert (dest / "done").read_text() == "built"
    assert not abandoned.exists()
    assert other.exists()


def test_a_build_that_raises_leaves_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "thing"

    def fail(work: Path) -> None:
        (work / "half").write_text("")
        raise ValueError("tool failed")

    with pytest.raises(ValueError, match="tool failed"):
        cached_dir(dest, fail, done="done")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".thing.lock"]
