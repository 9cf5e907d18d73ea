"""Data sets: deterministic, disjoint, stratified splits in the INT8 input range."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from perturbo.config import ConfigError, parse_config
from perturbo.data import (
    FASHION_MNIST_ENV,
    DatasetError,
    SampleStream,
    batches,
    load_dataset,
)


def digits(**data: object) -> object:
    return parse_config({"seed": 3, "data": dict(data)})


def rows(x: torch.Tensor) -> set[bytes]:
    return {r.numpy().tobytes() for r in x}


def test_digits_splits_are_deterministic() -> None:
    a, b = load_dataset(digits()), load_dataset(digits())
    for name in ("train", "val", "test"):
        assert torch.equal(a.split(name).x, b.split(name).x)
        assert torch.equal(a.split(name).y, b.split(name).y)
    c = load_dataset(parse_config({"seed": 4}))
    assert not torch.equal(a.train.y, c.train.y), "another seed gives another split"


def test_digits_splits_are_disjoint_and_complete() -> None:
    s = load_dataset(digits())
    assert len(s.train) + len(s.val) + len(s.test) == 1797
    assert len(s.test) == pytest.approx(0.2 * 1797, abs=1)
    assert len(s.val) == pytest.approx(0.1 * (1797 - len(s.test)), abs=1)
    # the 1797 digits images are all distinct, so distinct rows mean distinct samples
    train, val, test = rows(s.train.x), rows(s.val.x), rows(s.test.x)
    assert len(train | val | test) == 1797
    assert train.isdisjoint(val) and train.isdisjoint(test) and val.isdisjoint(test)


def test_digits_stratified_value_range_and_types() -> None:
    s = load_dataset(digits())
    for part in (s.train, s.val, s.test):
        assert part.x.dtype == torch.int16 and part.y.dtype == torch.int64
        assert part.x.shape[1] == 64
        assert int(part.x.min()) >= 0 and int(part.x.max()) <= 127
        counts = torch.bincount(part.y, minlength=10).double()
        assert counts.min() / counts.max() > 0.8, "every class in every split, evenly"
    assert int(s.train.x.max()) == 127  # 16 -> 127
    assert s.offsets is None


def test_centred_inputs_subtract_the_training_means() -> None:
    """data.inputs: centred: every split minus the training split's rounded per-feature means."""
    raw, cen = load_dataset(digits()), load_dataset(digits(inputs="centred"))
    full = load_dataset(digits(train_limit=100, inputs="centred"))
    m = cen.offsets
    assert m is not None and m.dtype == torch.int16 and m.shape == (64,)
    # the rounded mean of the (untruncated) training split, and the same with train_limit
    assert torch.equal(m, torch.floor(raw.train.x.double().mean(0) + 0.5).to(torch.int16))
    assert torch.equal(full.offsets, m)
    for name in ("train", "val", "test"):
        assert torch.equal(cen.split(name).x, raw.split(name).x - m)
        assert torch.equal(cen.split(name).y, raw.split(name).y)
        x = cen.split(name).x
        assert x.dtype == torch.int16 and int(x.min()) >= -127 and int(x.max()) <= 127
    assert abs(float(cen.train.x.double().mean())) < 0.5


def test_train_limit_truncates_only_training_data() -> None:
    full, small = load_dataset(digits()), load_dataset(digits(train_limit=100))
    assert len(small.train) == 100
    assert torch.equal(small.val.x, full.val.x) and torch.equal(small.test.x, full.test.x)
    assert torch.equal(small.train.x, full.train.x[:100])  # a prefix of the shuffled split


def test_network_width_must_match_dataset() -> None:
    cfg = parse_config({"data": {"dataset": "digits"}, "network": {"layers": [784, 32, 10]}})
    with pytest.raises(ConfigError, match=r"network\.layers\[0\] = 784 .* 64 input features"):
        load_dataset(cfg)


def test_missing_fashion_names_the_package(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path / "absent"))
    cfg = parse_config({"data": {"dataset": "fashion-mnist"}, "network": {"layers": [784, 10]}})
    with pytest.raises(DatasetError) as err:
        load_dataset(cfg)
    msg = str(err.value)
    assert "dataset-fashion-mnist" in msg and "apt-get install" in msg
    assert FASHION_MNIST_ENV in msg


def _idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_fashion_from_idx_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    for part, n in (("train", 200), ("t10k", 50)):
        _idx(tmp_path / f"{part}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _idx(tmp_path / f"{part}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path))
    cfg = parse_config({"data": {"dataset": "fashion-mnist"}, "network": {"layers": [784, 10]}})
    s = load_dataset(cfg)
    assert (len(s.train), len(s.val), len(s.test)) == (180, 20, 50)
    assert s.n_features == 784 and int(s.train.x.max()) <= 127 and int(s.train.x.min()) >= 0
    assert rows(s.train.x).isdisjoint(rows(s.val.x))
    # the test split is the t10k file, in order, pixels halved
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz") as f:
        raw = np.frombuffer(f.read(), np.uint8, offset=16).reshape(50, 784)
    assert np.array_equal(s.test.x.numpy(), raw >> 1)


def test_corrupt_idx_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for part in ("train", "t10k"):
        _idx(tmp_path / f"{part}-images-idx3-ubyte.gz", np.zeros((20, 28, 28)))
        _idx(tmp_path / f"{part}-labels-idx1-ubyte.gz", np.zeros(20))
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + (20).to_bytes(4, "big") + bytes(8) + bytes(100))
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path))
    cfg = parse_config({"data": {"dataset": "fashion-mnist"}, "network": {"layers": [784, 10]}})
    with pytest.raises(DatasetError, match="truncated or corrupt"):
        load_dataset(cfg)


def test_sample_stream_is_resumable_mid_epoch() -> None:
    x = torch.arange(10, dtype=torch.int16)[:, None]
    y = torch.arange(10)
    whole = SampleStream(x, y, seed=5)
    taken = [whole.take(3)[1] for _ in range(9)]  # 27 samples: crosses two epoch ends
    assert whole.cursor == (2, 7)
    first_epoch = torch.cat(taken)[:10]
    assert sorted(first_epoch.tolist()) == list(range(10)), "each epoch visits every sample once"
    assert not torch.equal(torch.cat(taken)[:10], torch.cat(taken)[10:20]), "reshuffled"
    again = SampleStream(x, y, seed=5)
    for _ in range(4):
        again.take(3)
    resumed = SampleStream(x, y, seed=5, epoch=again.cursor[0], position=again.cursor[1])
    rest = [resumed.take(3)[1] for _ in range(5)]
    assert torch.equal(torch.cat(rest), torch.cat(taken[4:]))


def test_batches_generator_matches_stream() -> None:
    x, y = torch.arange(7, dtype=torch.int16)[:, None], torch.arange(7)
    gen = batches(x, y, 4, seed=1)
    stream = SampleStream(x, y, seed=1)
    for _ in range(5):
        xb, yb, cursor = next(gen)
        assert torch.equal(yb, stream.take(4)[1]) and cursor == stream.cursor


def test_split_seed_fixes_the_split_across_training_seeds() -> None:
    base = load_dataset(parse_config({"seed": 3}))
    same = load_dataset(parse_config({"seed": 3, "data": {"split_seed": 3}}))
    for name in ("train", "val", "test"):  # unset split_seed is the top-level seed: old splits unchanged
        assert torch.equal(base.split(name).x, same.split(name).x)
        assert torch.equal(base.split(name).y, same.split(name).y)
    other = load_dataset(parse_config({"seed": 9, "data": {"split_seed": 3}}))
    for name in ("train", "val", "test"):
        assert torch.equal(base.split(name).x, other.split(name).x), f"{name} follows split_seed, not seed"
    moved = load_dataset(parse_config({"seed": 3, "data": {"split_seed": 4}}))
    assert rows(moved.test.x) != rows(base.test.x), "another split_seed gives another test set"


def test_split_seed_keeps_training_randomness_on_seed() -> None:
    from perturbo.golden.integer import init_weights

    a = parse_config({"seed": 1, "data": {"split_seed": 7}})
    b = parse_config({"seed": 2, "data": {"split_seed": 7}})
    assert a.split_seed == b.split_seed == 7 and parse_config({"seed": 5}).split_seed == 5
    assert not torch.equal(init_weights(a)[0], init_weights(b)[0])
    s = load_dataset(a)
    ya = SampleStream(s.train.x, s.train.y, a.seed).take(64)[1]
    yb = SampleStream(s.train.x, s.train.y, b.seed).take(64)[1]
    assert not torch.equal(ya, yb), "the epoch order follows seed"


@pytest.mark.parametrize("bad", [-1, 2**32, "x"])
def test_split_seed_is_validated(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"data\.split_seed"):
        parse_config({"data": {"split_seed": bad}})
