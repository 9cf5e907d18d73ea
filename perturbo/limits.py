"""What the largest FPGA target can hold: refused before any RTL is elaborated.

Amaranth elaborates every memory word as a Python object, so a configuration whose
memories exceed every board (``hardware.sample_depth: 200000`` once took 5.3 GB in
``perturbo gen``) is refused here, by :func:`check_fits_target`, naming the key to
change and the largest value that would fit.
"""

from __future__ import annotations

from .config import Config, ConfigError, Optimizer

#: Block RAM of the largest target, the ECP5-85F (ULX3S-85F): 208 EBR of 18 Kbit.
TARGET_RAM_BITS = 208 * 18 * 1024
#: Largest target that bound is taken from.
TARGET_NAME = "ECP5-85F (208 block RAMs of 18 Kbit)"
#: Bits of one stored input feature (INT8) and of one stored output score.
SAMPLE_BITS, OUTPUT_BITS = 8, 32
#: The loss record of a ``hardware.streaming`` build: 256 words of 32 bits (hdl/geometry.py, ``LOSS_DEPTH``).
LOSS_RECORD_BITS = 256 * 32


def memory_bits(cfg: Config) -> dict[str, int]:
    """Bits of the accelerator's main memories (a lower bound: lane padding is left out)."""
    synapses = sum(o * i for o, i in cfg.layer_shapes())
    num, depth = cfg.numerics, cfg.hardware.sample_depth
    n_in, classes = cfg.network.layers[0], cfg.network.layers[-1]
    bits = {
        "weights": synapses * num.weight_bits,
        "G": synapses * num.grad_bits,
        "samples": depth * 4 * -(-n_in // 4) * SAMPLE_BITS,  # (padded to whole words: Geometry.sample_stride)
        "outputs": depth * classes * OUTPUT_BITS,
        "labels": depth * max(1, (classes - 1).bit_length()),
    }
    if cfg.rule.optimizer is Optimizer.MOMENTUM:
        bits["momentum"] = synapses * num.grad_bits
    if cfg.hardware.streaming:
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
