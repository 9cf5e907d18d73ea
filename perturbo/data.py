"""Data sets, deterministic splits and the per-epoch shuffled sample stream.

Everything here is offline: the digits come from scikit-learn's wheel and
Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package (IDX files). Inputs
are returned in the INT8 input format of docs/numerics.md: int16 tensors with
values 0..127, or with ``data.inputs: centred`` -127..127 (each feature minus its
rounded mean over the training split); labels are int64 class indices.

Splits depend only on ``cfg.split_seed`` (``data.split_seed``, or ``seed`` when
that is not set) and shuffles only on ``cfg.seed`` and the epoch, never on global
random state, so a run is reproducible and resumable, and several training seeds
can share one split.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from .config import Config, ConfigError, Dataset, InputFormat

__all__ = [
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_ENV",
    "DatasetError",
    "SampleStream",
    "Split",
    "Splits",
    "batches",
    "derive_seed",
    "epoch_permutation",
    "input_offsets",
    "load_dataset",
]

#: Where Debian's ``dataset-fashion-mnist`` package installs the IDX files.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
#: Environment variable that overrides :data:`FASHION_MNIST_DIR`.
FASHION_MNIST_ENV = "PERTURBO_FASHION_MNIST_DIR"

_FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}

#: The largest input value: inputs are non-negative INT8.
INPUT_MAX = 127


class DatasetError(RuntimeError):
    """A data set that is missing or unreadable; the message says how to install or point to it."""


@dataclass(frozen=True)
class Split:
    """One split of a data set.

    Parameters
    ----------
    x : torch.Tensor
        int16 inputs, shape ``(n, features)``, values 0..127 (centred: -127..127).
    y : torch.Tensor
        int64 class indices, shape ``(n,)``.
    """

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class Splits:
    """The train, validation and test splits of one data set.

    Parameters
    ----------
    train, val, test : Split
        Disjoint splits; ``train`` is already truncated to ``data.train_limit``.
    n_features : int
        Input width (64 for digits, 784 for Fashion-MNIST).
    n_classes : int
        Number of classes (10 for both).
    dataset : str
        The data set's name, as in the configuration.
    offsets : torch.Tensor or None
        ``data.inputs: centred``: the int16 per-feature offsets ``m_j`` already
        subtracted from every split (:func:`input_offsets`); None for unsigned inputs.
    """

    train: Split
    val: Split
    test: Split
    n_features: int
    n_classes: int
    dataset: str
    offsets: torch.Tensor | None = None

    def split(self, name: str) -> Split:
        """The split called ``train``, ``val`` or ``test``."""
        if name not in ("train", "val", "test"):
            raise ValueError(f"split must be one of 'train', 'val', 'test', not {name!r}")
        return getattr(self, name)


# -- seeds ---------------------------------------------------------------------------


def derive_seed(seed: int, purpose: str, *extra: int) -> int:
    """A 32-bit seed for one purpose (``"test-split"``, ``"shuffle"``, ...) derived from ``seed``.

    Different purposes get statistically independent streams from the one
    configuration seed; the derivation is stable across runs and platforms.
    """
    entropy = [int(seed), zlib.crc32(purpose.encode()), *(int(e) for e in extra)]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint32)[0])


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order in which epoch ``epoch`` visits ``n`` samples (depends on the arguments only)."""
    rng = np.random.Generator(np.random.PCG64(derive_seed(seed, "shuffle", epoch)))
    return rng.permutation(n)


# -- loading -------------------------------------------------------------------------


def _quantise_digits(pixels: np.ndarray) -> np.ndarray:
    """sklearn digits 0..16 to 0..127: round(p * 127 / 16), ties upwards, in integers."""
    p = pixels.astype(np.int64)
    return ((p * INPUT_MAX + 8) // 16).astype(np.int16)


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return _quantise_digits(bunch.data), bunch.target.astype(np.int64)


def _fashion_dir() -> Path:
    return Path(os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DIR)


def _missing_fashion(directory: Path, detail: str) -> DatasetError:
    return DatasetError(
        f"Fashion-MNIST is not in {directory} ({detail}).\n"
        f"Install Debian's package dataset-fashion-mnist (apt-get install dataset-fashion-mnist), "
        f"or set {FASHION_MNIST_ENV} to a directory holding "
        f"{', '.join(sorted(_FASHION_FILES.values()))}."
    )


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read one gzip-compressed IDX file of unsigned bytes with ``ndim`` dimensions."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as err:  # zlib.error: corrupt deflate data
        raise DatasetError(
            f"cannot read {path}: {err}; the file is damaged: reinstall it "
            f"(apt-get install --reinstall dataset-fashion-mnist) or point {FASHION_MNIST_ENV} at a good copy"
        ) from None
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path} is not an IDX file: only {len(raw)} bytes")
    zero, dtype_code, dims = raw[0:2], raw[2], raw[3]
    if zero != b"\x00\x00" or dtype_code != 0x08 or dims != ndim:
        raise DatasetError(
            f"{path} is not an IDX file of unsigned bytes with {ndim} dimensions "
            f"(magic {raw[:4].hex()}, expected 000008{ndim:02x})"
        )
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    count = int(np.prod(shape))
    if len(raw) - header != count:
        raise DatasetError(
            f"{path} is truncated or corrupt: its header promises {count} values, "
            f"it holds {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


@lru_cache(maxsize=2)
def _load_fashion(directory: Path, pool: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if not directory.is_dir():
        raise _missing_fashion(directory, "no such directory")
    missing = [name for name in _FASHION_FILES.values() if not (directory / name).is_file()]
    if missing:
        raise _missing_fashion(directory, f"missing {', '.join(missing)}")
    arrays = {key: _read_idx(directory / name, 3 if key.endswith("images") else 1)
              for key, name in _FASHION_FILES.items()}
    out = []
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if images.shape[0] != labels.shape[0]:
            raise DatasetError(
                f"Fashion-MNIST {part} set in {directory} has {images.shape[0]} images "
                f"but {labels.shape[0]} labels"
            )
        if pool > 1:  # mean of each pool x pool block, rounded half up
            n, side = images.shape[0], images.shape[1] // pool
            blocks = images.reshape(n, side, pool, side, pool).astype(np.int32).sum(axis=(2, 4))
            images = (2 * blocks + pool * pool) // (2 * pool * pool)
        x = (images.reshape(images.shape[0], -1) >> 1).astype(np.int16)  # 0..255 -> 0..127
        out += [x, labels.astype(np.int64)]
    return out[0], out[1], out[2], out[3]


def input_offsets(x_train: np.ndarray) -> np.ndarray:
    """Per-feature offsets of ``data.inputs: centred``: the mean of each feature over ``x_train``
    (0..127 inputs), rounded half up in integers, so that ``x - m`` stays in -127..127."""
    total = x_train.astype(np.int64).sum(axis=0)
    n = x_train.shape[0]
    return ((2 * total + n) // (2 * n)).astype(np.int16)


def _check_network(cfg: Config, n_features: int, n_classes: int) -> None:
    layers = cfg.network.layers
    if layers[0] != n_features:
        raise ConfigError(
            f"invalid configuration: network.layers[0] = {layers[0]} but data set "
            f"{cfg.data.dataset.value} has {n_features} input features"
        )
    if layers[-1] != n_classes:
        raise ConfigError(
            f"invalid configuration: network.layers[-1] = {layers[-1]} but data set "
            f"{cfg.data.dataset.value} has {n_classes} classes"
        )


def _split(x: np.ndarray, y: np.ndarray) -> Split:
    return Split(torch.from_numpy(np.ascontiguousarray(x)),
                 torch.from_numpy(np.ascontiguousarray(y)))


def load_dataset(cfg: Config, *, check_network: bool = True) -> Splits:
    """Load ``cfg.data.dataset`` and split it deterministically from ``cfg.split_seed``.

    Digits: a stratified ``test_fraction`` test split, then a stratified
    ``validation_fraction`` of the rest for validation. Fashion-MNIST: its own
    10 000-image test set, and a stratified ``validation_fraction`` of its
    training set for validation. The training split is then shuffled (from the
    split seed) and truncated to ``data.train_limit``; validation and test do not
    depend on ``train_limit``. With ``data.inputs: centred`` every split has the
    training split's rounded per-feature means (before ``train_limit``) subtracted.

    Raises
    ------
    DatasetError
        The data set's files are missing or unreadable.
    ConfigError
        ``check_network`` and the network's input or output width does not
        match the data set.
    """
    data, split_seed = cfg.data, cfg.split_seed
    if data.dataset == Dataset.DIGITS:
        x_all, y_all = _load_digits()
        x_rest, x_test, y_rest, y_test = train_test_split(
            x_all, y_all, test_size=data.test_fraction, stratify=y_all,
            random_state=derive_seed(split_seed, "test-split"),
        )
    elif data.dataset == Dataset.FASHION_MNIST:
        x_rest, y_rest, x_test, y_test = _load_fashion(_fashion_dir(), data.pool)
        x_test, y_test = x_test.copy(), y_test.copy()  # never hand out the cached arrays
    else:  # pragma: no cover - the config enum admits nothing else
        raise DatasetError(f"unknown data set {data.dataset!r}")
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=data.validation_fraction, stratify=y_rest,
        random_state=derive_seed(split_seed, "validation-split"),
    )
    offsets = None
    if data.inputs == InputFormat.CENTRED:  # host-side: the accelerator sees signed INT8 samples
        offsets = input_offsets(x_train)
        x_train, x_val, x_test = (x - offsets for x in (x_train, x_val, x_test))
    order = np.random.Generator(np.random.PCG64(derive_seed(split_seed, "train-order"))).permutation(
        len(y_train)
    )
    if data.train_limit is not None:
        order = order[: data.train_limit]
    x_train, y_train = x_train[order], y_train[order]

    n_features, n_classes = int(x_rest.shape[1]), int(max(y_rest.max(), y_test.max()) + 1)
    if check_network:
        _check_network(cfg, n_features, n_classes)
    return Splits(
        train=_split(x_train, y_train),
        val=_split(x_val, y_val),
        test=_split(x_test, y_test),
        n_features=n_features,
        n_classes=n_classes,
        dataset=data.dataset.value,
        offsets=None if offsets is None else torch.from_numpy(offsets),
    )


# -- the sample stream ---------------------------------------------------------------


class SampleStream:
    """An endless, deterministic stream of training samples, reshuffled every epoch.

    Epoch ``e`` visits the samples in the order ``epoch_permutation(n, seed, e)``;
    a request that runs past the end of an epoch continues into the next one.
    The position in the stream is the *cursor* ``(epoch, position)``: a stream
    rebuilt from the same data, seed and cursor yields exactly the same samples,
    which is what makes a training run resumable mid-epoch.

    Parameters
    ----------
    x, y : torch.Tensor
        The training inputs and labels (same length, at least one sample).
    seed : int
        The configuration seed.
    epoch, position : int
        Where to start: epoch number and index into that epoch's order.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, seed: int, epoch: int = 0,
                 position: int = 0) -> None:
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
        if len(y) == 0:
            raise ValueError("cannot stream from an empty training split")
        if epoch < 0 or not 0 <= position < len(y):
            raise ValueError(f"cursor ({epoch}, {position}) is outside a {len(y)}-sample data set")
        self.x, self.y, self.seed = x, y, seed
        self.epoch, self.position = epoch, position
        self._order = self._permutation()

    def _permutation(self) -> torch.Tensor:
        return torch.from_numpy(epoch_permutation(len(self.y), self.seed, self.epoch))

    @property
    def cursor(self) -> tuple[int, int]:
        """``(epoch, position)`` of the next sample."""
        return self.epoch, self.position

    def take(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The next ``n`` samples ``(x, y)``, crossing epoch boundaries as needed."""
        if n <= 0:
            raise ValueError(f"n must be a positive integer, not {n!r}")
        parts: list[torch.Tensor] = []
        need = n
        while need:
            k = min(need, len(self.y) - self.position)
            parts.append(self._order[self.position : self.position + k])
            self.position += k
            need -= k
            if self.position == len(self.y):
                self.epoch += 1
                self.position = 0
                self._order = self._permutation()
        index = parts[0] if len(parts) == 1 else torch.cat(parts)
        return self.x[index], self.y[index]


def batches(x: torch.Tensor, y: torch.Tensor, n: int, seed: int, epoch: int = 0,
            position: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, tuple[int, int]]]:
    """Yield ``(x_batch, y_batch, cursor_after)`` forever, ``n`` samples at a time.

    A thin generator over :class:`SampleStream`; ``cursor_after`` is where a
    resumed stream must start to continue with the following batch.
    """
    stream = SampleStream(x, y, seed, epoch, position)
    while True:
        xb, yb = stream.take(n)
        yield xb, yb, stream.cursor
