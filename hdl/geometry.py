"""Where everything sits: memory rows, random-source index spaces, activation words.

One :class:`Geometry` per configuration is shared by every block of the datapath, by
the testbenches and by the host side, so there is one definition of each layout.

Weight, G and momentum memories
    ``lanes`` memories, one per MAC lane.  Layer ``l`` gives each neuron ``split_l`` lanes
    (1, or with ``hardware.split_inputs`` in an ``mgd-weight`` layer of at most
    ``lanes / 2`` neurons the largest power of two that fits: :func:`input_split`), so a
    group holds ``per_group_l = lanes / split_l`` neurons and the layer has
    ``groups_l = ceil(n_out_l / per_group_l)`` groups (one, where ``split_l > 1``).  A
    group's *tokens* (one a cycle in the forward engine) each hold ``split_l`` consecutive
    inputs ``j`` of every neuron, the bias ``j = n_in_l`` last; ``tokens_l =
    ceil((n_in_l + 1) / split_l)``, and inputs past the bias are padding (input 0).  Weight
    ``(i, j)`` is in lane ``(i % per_group_l) * split_l + j % split_l`` at row ``row_base_l +
    (i // per_group_l) * tokens_l + j // split_l``.  The host sees row ``r`` of lane ``k``
    at word address ``r * lanes + k``.

Activation memory (inside the forward engine)
    ``lanes`` INT8 values per word: the outputs of one neuron group (neuron
    ``g * per_group_l + k`` in byte ``k``: every byte but where ``split_l > 1``).  Layer ``l``'s
    outputs occupy words ``act_base_l .. act_base_l + groups_l - 1``; input ``j`` of
    layer ``l >= 1`` is byte ``j % lanes`` of word ``act_base_{l-1} + j // lanes``.
    Four banks: two for baseline passes (alternating by sample) and two for perturbed
    passes (alternating by pass), so the correlation of a pass can read its layer
    inputs while the next passes run.  A *factor memory* beside it holds, per neuron
    group, what the correlation needs of each neuron (:attr:`Geometry.factor_bits`).

Random-source indices (docs/numerics.md §4)
    the sign of weight ``(i, j)`` of layer ``l``: bit ``i & 31`` of the sign word
    ``sign_offset_l + (i >> 5) * (n_in_l + 1) + j``; neuron ``i``: ``neuron_offset_l + i``.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from amaranth.hdl import signed, unsigned
from amaranth.lib import data
from numpy.typing import ArrayLike

from perturbo.config import TARGET_PROJECTION_RULES, Activation, Config, Optimizer, Rule
from perturbo.golden.units import SIGN_BLOCK, sign_blocks
from perturbo.limits import LOSS_DEPTH, SAMPLES_PER_WORD, sample_stride

__all__ = ["LayerGeometry", "Geometry", "input_split", "layer_splits", "config_hash", "ceil_log2",
           "FACTOR_BITS_PROJECTION", "LOSS_DEPTH"]

#: Width of the gated error ``g`` of target projection: ``y - tl`` spans -255..255.
FACTOR_BITS_PROJECTION = 9



def ceil_log2(n: int) -> int:
    """Bits to address ``n`` words (at least 1)."""
    return max(1, (n - 1).bit_length())


@dataclass(frozen=True)
class LayerGeometry:
    """One layer's sizes and offsets (see the module docstring)."""

    index: int
    n_in: int
    n_out: int
    groups: int  #: neuron groups of :attr:`per_group` neurons
    row_base: int  #: first weight-memory row
    sign_offset: int  #: first sign word of the random source (a word per 32 neurons and input)
    neuron_offset: int  #: first neuron index of the random source
    projection_offset: int  #: first projection index (``B[c, i]`` at ``+ c * n_out + i``)
    act_base: int  #: first activation word of this layer's outputs
    shift: int  #: requantisation shift
    activation: Activation | None  #: None for the (linear) output layer
    rule: Rule
    lr_shift: int
    split: int  #: lanes a neuron, each on its own inputs (a power of two)
    per_group: int  #: neurons a group: ``lanes // split``

    @property
    def cols(self) -> int:
        """Inputs plus the bias."""
        return self.n_in + 1

    @property
    def tokens(self) -> int:
        """Tokens (weight rows) per neuron group: :attr:`split` inputs each."""
        return -(-self.cols // self.split)

    @property
    def rows(self) -> int:
        """Memory rows of the layer."""
        return self.groups * self.tokens

    @property
    def bias_slot(self) -> int:
        """The bias input's place in the last token (inputs past it are padding)."""
        return self.n_in % self.split

    def neurons_in(self, group: int) -> int:
        """Neurons of ``group`` that exist (the last group may be partly empty): the result
        lanes that hold one."""
        return max(0, min(self.per_group, self.n_out - group * self.per_group))

    def synapse_mask(self, group: int, token: int) -> int:
        """Lanes of ``(group, token)`` that hold a weight of the network (bit ``k``: lane ``k``)."""
        mask = 0
        for i in range(self.neurons_in(group)):
            for slot in range(self.split):
                if token * self.split + slot <= self.n_in:
                    mask |= 1 << (i * self.split + slot)
        return mask


def input_split(lanes: int, n_out: int, first_layer: bool) -> int:
    """Lanes a neuron of an ``mgd-weight`` layer can take: the largest power of two ``s``
    dividing ``lanes`` with ``s * n_out <= lanes`` (so the layer is one group), at most
    :data:`~perturbo.limits.SAMPLES_PER_WORD` in the first layer (its inputs are a window of
    one sample buffer word)."""
    split = 1
    while lanes % (2 * split) == 0 and 2 * split * n_out <= lanes \
            and not (first_layer and 2 * split > SAMPLES_PER_WORD):
        split *= 2
    return split


def layer_splits(cfg: Config) -> list[int]:
    """Each layer's :attr:`LayerGeometry.split` (:func:`input_split` where it may split)."""
    lanes, sizes = cfg.hardware.lanes, cfg.network.layers
    return [input_split(lanes, sizes[li + 1], li == 0)
            if cfg.hardware.split_inputs and rule == Rule.MGD_WEIGHT else 1
            for li, rule in enumerate(cfg.layer_rules())]


class Geometry:
    """Sizes, widths and layouts of the datapath for one configuration.

    Parameters
    ----------
    cfg
        The resolved configuration.

    Raises
    ------
    ValueError
        ``hardware.weight_depth`` is smaller than the network needs, the rule is not one
        the weight-perturbation datapath runs, or a width is out of what it supports.
    """

    def __init__(self, cfg: Config) -> None:
        if not isinstance(cfg, Config):
            raise TypeError(f"cfg must be a perturbo.config.Config, not {cfg!r}")
        self.cfg = cfg
        hw, num, net, rule = cfg.hardware, cfg.numerics, cfg.network, cfg.rule
        self.lanes = hw.lanes
        self.hash_stages_per_register = hw.hash_stages_per_register
        self.lane_products = hw.lane_products
        self.update_products = hw.update_products
        #: weights the update unit writes a cycle (``hardware.update_lanes``), and the cycles
        #: it takes a weight row (the step's last correlation walk gives it a row that often)
        self.update_width = hw.update_width
        self.update_ratio = self.lanes // self.update_width
        #: G's reads answer a cycle later (a register at the block RAM's output), and the
        #: update's multipliers take registered inputs (``hardware.register_grads``)
        self.register_grads = hw.grads_registered
        #: cycles from a read of the G memories to their data
        self.grads_read_latency = 2 if self.register_grads else 1
        #: the weight memories' read port (the update's) is registered at the block RAMs'
        #: output: with ``register_grads``, where the forward engine reads a copy of its own
        #: (``overlap_update``) (their unregistered output into the update's stage C was the
        #: 16- and 32-lane ECP5 builds' slowest path)
        self.weights_registered = self.register_grads and hw.overlap_update
        #: cycles from the update's read of the weight memories to their data
        self.weights_read_latency = 2 if self.weights_registered else 1
        self.weight_bits = num.weight_bits
        self.acc_bits = num.acc_bits
        self.grad_bits = num.grad_bits
        self.rounding = num.rounding
        self.overflow = num.overflow
        self.momentum = rule.optimizer == Optimizer.MOMENTUM
        self.momentum_shift = rule.momentum_shift
        #: tpsgd-l1's dead zone on the hidden-layer sign error (docs/numerics.md §6; 0: none)
        self.dead_zone = rule.dead_zone
        self.sample_depth = hw.sample_depth
        self.n_inputs = net.layers[0]
        self.classes = net.layers[-1]
        rules = cfg.layer_rules()
        shifts = net.layer_shifts
        lr_shifts = cfg.layer_lr_shifts()
        n = net.n_layers
        splits = layer_splits(cfg)
        layers = []
        row = s_off = n_off = p_off = act = 0
        for li in range(n):
            n_in, n_out = net.layers[li], net.layers[li + 1]
            split = splits[li]
            per_group = self.lanes // split
            groups = -(-n_out // per_group)
            lay = LayerGeometry(
                index=li, n_in=n_in, n_out=n_out, groups=groups, row_base=row,
                sign_offset=s_off, neuron_offset=n_off, projection_offset=p_off,
                act_base=act, shift=shifts[li],
                activation=net.activation if li < n - 1 else None, rule=rules[li],
                lr_shift=lr_shifts[li], split=split, per_group=per_group,
            )
            layers.append(lay)
            row += lay.rows
            s_off += sign_blocks(n_out) * (n_in + 1)
            n_off += n_out
            p_off += self.classes * n_out
            act += groups
        self.layers: tuple[LayerGeometry, ...] = tuple(layers)
        #: weight/G/momentum rows the network uses
        self.rows = row
        if hw.weight_depth is not None and hw.weight_depth < row:
            raise ValueError(
                f"hardware.weight_depth = {hw.weight_depth} is too small: the network needs {row} "
                f"words per lane with {self.lanes} lanes"
            )
        #: words per lane of the weight, G and momentum memories
        self.weight_depth = hw.weight_depth if hw.weight_depth is not None else row
        self.row_bits = ceil_log2(self.weight_depth)
        #: activation words per bank (outputs of every layer)
        self.act_words = act
        self.act_bank_bits = ceil_log2(act)
        self.total_sign_words = s_off
        self.total_neurons = n_off
        self.max_groups = max(lay.groups for lay in self.layers)
        self.max_cols = max(lay.cols for lay in self.layers)
        self.max_tokens = max(lay.tokens for lay in self.layers)
        #: the most lanes a neuron takes (1: no layer splits its inputs)
        self.max_split = max(lay.split for lay in self.layers)
        #: bytes a sample takes in the sample buffer (docs/protocol.md, ``SAMPLES``)
        self.sample_stride = sample_stride(self.n_inputs)
        #: log2 of the stride when it is a power of two (the sequencer then shifts the cursor
        #: instead of multiplying it), else None
        self.sample_stride_shift: int | None = (self.sample_stride.bit_length() - 1
                                                if self.sample_stride & (self.sample_stride - 1) == 0 else None)
        #: INT8 entries of the sample buffer (byte addresses of the datapath's read ports)
        self.sample_words = self.sample_depth * self.sample_stride
        self.sample_addr_bits = ceil_log2(self.sample_words)
        #: 32-bit words of the sample buffer on the host bus (four INT8 each)
        self.sample_bus_words = self.sample_words // SAMPLES_PER_WORD
        #: the loss record and refill while training (``hardware.streaming``)
        self.streaming = hw.streaming and hw.training  # an inference-only build runs no steps
        #: a run's next step starts while the update writes the weights, its first pass
        #: reading the weight memories through a second read port (``hardware.overlap_update``)
        self.overlap_update = hw.overlap_update and hw.training
        #: entries of the loss record: step ``k``'s loss is word ``k % loss_depth``
        self.loss_depth = LOSS_DEPTH if hw.streaming else 0
        #: activation/factor memory address: ``{bank (2 bits), word}``
        self.act_addr_bits = self.act_bank_bits + 2
        self.output_words = self.sample_depth * self.classes
        self.label_bits = max(1, (self.classes - 1).bit_length())
        self.loss_bits = (self.classes * 255 * 255).bit_length()  # unsigned, exact
        self.perturbed_layers = tuple(lay.index for lay in self.layers if lay.rule == Rule.MGD_WEIGHT)
        #: what the correlation walker reads besides G (so which memories need a second port):
        #: the sign memory (weight perturbation), the activations (a hidden layer's inputs, for
        #: the other rules) and the samples (layer 0's inputs, for the other rules)
        self.walker_reads_signs = bool(self.perturbed_layers)
        self.walker_reads_acts = any(lay.rule != Rule.MGD_WEIGHT for lay in self.layers[1:])
        self.walker_reads_samples = self.layers[0].rule != Rule.MGD_WEIGHT
        #: layers that take an injection in a perturbed pass (MGD node perturbation, ALR)
        self.inject_layers = tuple(lay.index for lay in self.layers
                                   if lay.rule in (Rule.MGD_NODE, Rule.ALR))
        #: target projection: one baseline pass per sample, no perturbed passes
        self.projection = all(lay.rule in TARGET_PROJECTION_RULES for lay in self.layers)
        #: layers that draw one word per neuron (an injection, or target projection's row of B)
        drawing = [lay for lay in self.layers
                   if lay.index in self.inject_layers or (self.projection and lay.index < len(self.layers) - 1)]
        #: the forward engine's hash pipes that draw sign words in an ``mgd-weight`` layer: a
        #: neuron group's lanes take their signs from consecutive bits of the words of their
        #: blocks of 32 neurons (docs/numerics.md §4), so one pipe serves up to 32 lanes (two
        #: where a group straddles a block's end); 0 without ``mgd-weight`` layers
        self.sign_pipes = max((self._blocks_of_group(lay, g) * lay.split
                               for lay in self.layers if lay.rule == Rule.MGD_WEIGHT
                               for g in range(lay.groups)), default=0)
        #: (a layer that splits its inputs over ``split`` lanes a neuron draws ``split`` words a
        #: token, each block's: pipe ``block * split + slot`` draws input ``slot`` of the token)
        #: neuron draws (node signs, ALR noise, target projection's ``B``) on one shared pipe:
        #: it draws lane ``k``'s word on the group's input ``k`` (every drawing layer has at
        #: least ``lanes`` inputs before its bias input) instead of ``lanes`` pipes drawing on
        #: the bias input; the words are the same (docs/numerics.md §4)
        self.shared_draw = all(lay.n_in >= self.lanes for lay in drawing)
        #: the forward engine's hash pipes: a lane's each where the neuron draws cannot share
        #: one, else the sign pipes (at least one: it also computes the pass keys)
        self.draw_pipes = max(1, self.sign_pipes) if self.shared_draw else self.lanes
        #: bits per neuron of the correlation factor the forward engine stores for the
        #: correlation walker: the gated error ``g`` (target projection, 9 bits), or
        #: ``sign(a * n)`` as (negative, zero) (ALR, 2 bits), or ``a * s = -1`` (MGD node,
        #: 1 bit); 0 when only weight perturbation runs
        if self.projection:
            self.factor_bits = FACTOR_BITS_PROJECTION
        elif any(lay.rule == Rule.ALR for lay in self.layers):
            self.factor_bits = 2
        elif self.inject_layers:
            self.factor_bits = 1
        else:
            self.factor_bits = 0

    def _blocks_of_group(self, lay: LayerGeometry, group: int) -> int:
        """Sign blocks (words per input) the neurons of ``group`` of ``lay`` span."""
        first = group * lay.per_group
        last = first + lay.neurons_in(group) - 1
        return last // SIGN_BLOCK - first // SIGN_BLOCK + 1

    def factor_layout(self) -> data.ArrayLayout:
        """One word of the factor memory: each lane's correlation factor (:attr:`factor_bits`)."""
        shape = signed(self.factor_bits) if self.projection else unsigned(max(1, self.factor_bits))
        return data.ArrayLayout(shape, self.lanes)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def in_words(self, layer: LayerGeometry) -> int:
        """Activation words holding ``layer``'s input (layers >= 1)."""
        return -(-layer.n_in // self.lanes)

    def row_of(self, layer: int, neuron: int, col: int) -> tuple[int, int]:
        """``(row, lane)`` of weight ``(neuron, col)`` of ``layer`` in the lane memories."""
        lay = self.layers[layer]
        return (lay.row_base + (neuron // lay.per_group) * lay.tokens + col // lay.split,
                (neuron % lay.per_group) * lay.split + col % lay.split)

    def address_of(self, layer: int, neuron: int, col: int) -> int:
        """Host word address (inside the WEIGHTS/GRADS/MOMENTUM space) of one weight."""
        row, lane = self.row_of(layer, neuron, col)
        return row * self.lanes + lane

    def matrix_rows(self, layer: int) -> list[tuple[int, int, int, int]]:
        """``(neuron, col, row, lane)`` of every weight of ``layer``, in row-major order."""
        lay = self.layers[layer]
        out = []
        for i in range(lay.n_out):
            for j in range(lay.cols):
                row, lane = self.row_of(layer, i, j)
                out.append((i, j, row, lane))
        return out

    def to_image(self, mats: Sequence[ArrayLike], depth: int | None = None) -> np.ndarray:
        """The lane-memory image of per-layer matrices (numpy arrays or torch tensors), flat
        by host word address ``row * lanes + lane``.

        ``depth`` rows (default :attr:`rows`); words no weight uses are 0.
        """
        image = np.zeros((depth if depth is not None else self.rows) * self.lanes, dtype=np.int64)
        for li, w in enumerate(mats):
            image[self._addresses(li)] = np.asarray(w, dtype=np.int64)
        return image

    def from_image(self, image: ArrayLike) -> list[np.ndarray]:
        """Per-layer int64 matrices from a flat lane-memory image (the inverse of :meth:`to_image`)."""
        image = np.asarray(image, dtype=np.int64)
        return [image[self._addresses(li)] for li in range(len(self.layers))]

    def sample_image(self, x: ArrayLike) -> np.ndarray:
        """The ``SAMPLES`` bus words of samples ``x`` (``n x n_inputs`` INT8 features), from
        sample 0's first word: four features per word, little-endian (feature ``4i`` in bits
        0..7), each sample padded with zero bytes to :attr:`sample_stride`."""
        x = np.asarray(x, dtype=np.int64).reshape(-1, self.n_inputs)
        if x.size and (x.min() < -128 or x.max() > 127):
            raise ValueError("samples must be INT8 (-128 .. 127)")
        image = np.zeros((x.shape[0], self.sample_stride), dtype="<i1")
        image[:, : self.n_inputs] = x
        return image.reshape(-1).view("<i4").astype(np.int64)

    @functools.cache  # noqa: B019 (a few Geometry objects per process; they live as long)
    def _addresses(self, layer: int) -> np.ndarray:
        """Host word address of every weight of ``layer``, shaped ``(n_out, cols)``."""
        lay = self.layers[layer]
        out = np.zeros((lay.n_out, lay.cols), dtype=np.int64)
        for i, j, row, lane in self.matrix_rows(layer):
            out[i, j] = row * self.lanes + lane
        return out


def generation_parameters(cfg: Config) -> dict:
    """The configuration values fixed at generation (what :func:`config_hash` covers)."""
    return {
        "layers": list(cfg.network.layers),
        "activation": cfg.network.activation.value,
        "shifts": cfg.network.layer_shifts,
        "rules": [r.value for r in cfg.layer_rules()],
        "lr_shifts": cfg.layer_lr_shifts(),
        "optimizer": cfg.rule.optimizer.value,
        "momentum_shift": cfg.rule.momentum_shift,
        "numerics": cfg.numerics.model_dump(mode="json"),
        "lanes": cfg.hardware.lanes,
        "weight_depth": cfg.hardware.weight_depth,
        "sample_depth": cfg.hardware.sample_depth,
        "streaming": cfg.hardware.streaming,
        # only when false: the training builds keep the hashes they had before the option
        **({} if cfg.hardware.training else {"training": False}),
        **({} if cfg.hardware.overlap_update else {"overlap_update": False}),
        **({"dead_zone": cfg.rule.dead_zone} if cfg.rule.dead_zone else {}),
        **({"register_grads": True} if cfg.hardware.grads_registered else {}),
        # only where it differs from lanes (it changes the cycles of a step, not a value)
        **({"update_lanes": cfg.hardware.update_width}
           if cfg.hardware.training and cfg.hardware.update_width != cfg.hardware.lanes else {}),
        # only where a layer splits: the other builds keep their hashes
        **({"split": splits} if max(splits := layer_splits(cfg)) > 1 else {}),
    }


def config_hash(cfg: Config) -> int:
    """32-bit hash of :func:`generation_parameters`: the value of ``Reg.CONFIG_HASH``."""
    text = json.dumps(generation_parameters(cfg), sort_keys=True)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
