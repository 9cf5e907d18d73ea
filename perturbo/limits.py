"""What the largest FPGA target can hold: refused before any RTL is elaborated.

Amaranth elaborates every memory word as a Python object, so a configuration whose
memories exceed every board (``hardware.sample_depth: 200000`` once took 5.3 GB in
``perturbo gen``) is refused here, by :func:`check_fits_target`, naming the key to
change and the largest value that would fit.
"""

from __future__ import annotations

from .config import MAC_WEIGHT_BITS, Config, ConfigError, Optimizer

#: Block RAM of the largest target, the ECP5-85F (ULX3S-85F): 208 EBR of 18 Kbit.
TARGET_RAM_BITS = 208 * 18 * 1024
#: Largest target that bound is taken from.
TARGET_NAME = "ECP5-85F (208 block RAMs of 18 Kbit)"
#: Bits of one stored input feature and of one stored output score (both INT8: hdl/accelerator.py).
SAMPLE_BITS, OUTPUT_BITS = 8, 8
#: Entries of the loss record (``Space.LOSSES``) of a ``hardware.streaming`` build: one 32-bit
#: word per step, 256 of them fill one ECP5 block RAM or two iCE40 ones (as deep as a 32-bit
#: word of either gets), and a host that reads the losses whenever it refills the sample
#: buffer never falls that far behind (host/accelerator.py keeps the steps it grants within it).
LOSS_DEPTH = 256
LOSS_RECORD_BITS = LOSS_DEPTH * 32
#: The memory of the bits of each weight the MACs read (golden ``mac_weights``), beside the
#: master weights, for the forward engine's own read port.
MACS_WEIGHT_COPY = "MAC weights"
#: INT8 features per 32-bit word of the ``SAMPLES`` space (docs/protocol.md).
SAMPLES_PER_WORD = 4


def ring_steps(sample_depth: int, samples_per_step: int, loss_depth: int) -> int:
    """Steps a ``TRAIN_STREAM`` run may be granted ahead: what the sample ring holds with a
    slot left free, within the loss record (``loss_depth``, 0 in a build without one), so
    that no loss is overwritten before the host reads it.  The host driver streams when
    this is at least one (host/accelerator.py), and so trains in runs of several steps."""
    return min((sample_depth - 1) // samples_per_step, loss_depth)


def sample_stride(n_inputs: int) -> int:
    """Bytes a sample takes in the sample buffer: its features, padded to whole 32-bit words, so
    that the host writes them four per bus word and no word holds bytes of two samples."""
    return SAMPLES_PER_WORD * -(-n_inputs // SAMPLES_PER_WORD)


def memory_bits(cfg: Config) -> dict[str, int]:
    """Bits of the accelerator's main memories (a lower bound: lane padding is left out)."""
    synapses = sum(o * i for o, i in cfg.layer_shapes())
    num, depth = cfg.numerics, cfg.hardware.sample_depth
    n_in, classes = cfg.network.layers[0], cfg.network.layers[-1]
    bits = {
        "weights": synapses * num.weight_bits,
        "G": synapses * num.grad_bits,
        "samples": depth * sample_stride(n_in) * SAMPLE_BITS,
        "outputs": depth * classes * OUTPUT_BITS,
        "labels": depth * max(1, (classes - 1).bit_length()),
    }
    if cfg.hardware.overlap_update and cfg.hardware.training:  # the forward engine's own read port
        bits[MACS_WEIGHT_COPY] = synapses * MAC_WEIGHT_BITS
    if cfg.rule.optimizer is Optimizer.MOMENTUM:
        bits["momentum"] = synapses * num.grad_bits
    if cfg.hardware.streaming and cfg.hardware.training:
        bits["loss record"] = LOSS_RECORD_BITS
    return bits


def check_fits_target(cfg: Config, source: str = "the configuration") -> None:
    """Raise :class:`ConfigError` if the accelerator's memories exceed the largest target."""
    bits = memory_bits(cfg)
    total = sum(bits.values())
    if total <= TARGET_RAM_BITS:
        return
    per_sample = sum(v for k, v in bits.items() if k in ("samples", "outputs", "labels")) // cfg.hardware.sample_depth
    fixed = total - per_sample * cfg.hardware.sample_depth
    spare = TARGET_RAM_BITS - fixed
    if spare >= per_sample:
        hint = f"hardware.sample_depth = {cfg.hardware.sample_depth}: at most {spare // per_sample} fit"
    else:
        hint = f"network.layers = {cfg.network.layers}: the weights alone do not fit; use a smaller network"
    parts = ", ".join(f"{k} {v}" for k, v in bits.items())
    raise ConfigError(
        f"invalid configuration in {source}: the accelerator needs {total} bits of memory ({parts}), "
        f"more than the largest target holds ({TARGET_RAM_BITS} bits, {TARGET_NAME}); {hint}"
    )
