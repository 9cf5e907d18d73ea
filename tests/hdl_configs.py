"""The configurations the datapath tests run (small enough for quick simulations)."""

from __future__ import annotations

from perturbo.config import Config, parse_config

CONFIGS: dict[str, Config] = {
    # 4 lanes, a tiny 8-6-3 network, 12-bit master weights, 24-bit G, antithetic pairs
    # (3 copies: a pair and an odd one), momentum, leaky ReLU, floor rounding; the last
    # neuron group of each layer is partly empty; one register per hash (the shortest
    # forward pipe).
    "tiny": parse_config({
        "name": "tiny", "seed": 11,
        "network": {"layers": [8, 6, 3], "activation": "leaky-relu", "shifts": [6, 7]},
        "rule": {"name": "mgd-weight", "delta": 3, "copies": 3, "batch": 3, "tau_theta": 2,
                 "lr_mult": 5, "lr_shift": [6, 5], "optimizer": "momentum",
                 "momentum_shift": 2},
        "numerics": {"weight_bits": 12, "grad_bits": 24, "rounding": "floor"},
        "hardware": {"lanes": 4, "sample_depth": 16, "hash_stages_per_register": 6},
    }),
    # the digits network: 64-32-10, 8 lanes, batch 8, one copy, the default numerics.
    "digits": parse_config({
        "name": "digits", "seed": 1,
        "network": {"layers": [64, 32, 10]},
        "rule": {"name": "mgd-weight", "delta": 1, "copies": 1, "batch": 8, "lr_mult": 1,
                 "lr_shift": 12},
        "hardware": {"lanes": 8, "sample_depth": 32},
    }),
}

#: Configurations of the unit tests: the above and one with the other modes.
UNIT_CONFIGS: dict[str, Config] = {
    **CONFIGS,
    # 3 lanes (not a power of two), 5-7-4, hard sigmoid, wrap-around overflow, half-up
    # rounding, 10-bit weights, 16-bit G (so G wraps), the narrowest accumulator allowed,
    # a hash register every third stage.
    "odd": parse_config({
        "name": "odd", "seed": 3,
        "network": {"layers": [5, 7, 4], "activation": "hard-sigmoid", "shifts": [5, 6]},
        "rule": {"name": "mgd-weight", "delta": 2, "copies": 2, "batch": 2, "lr_mult": 200,
                 "lr_shift": [9, 3], "optimizer": "momentum", "momentum_shift": 1},
        "numerics": {"weight_bits": 10, "grad_bits": 16, "acc_bits": 19,
                     "overflow": "wrap", "rounding": "half-up"},
        "hardware": {"lanes": 3, "sample_depth": 4, "hash_stages_per_register": 3},
    }),
}

#: The forward engine's configurations: the above, a hybrid whose first layer takes
#: injections (MGD node perturbation) from fewer inputs than lanes (so a hash pipe per lane,
#: the first of which also draws the second layer's weight signs), a layer wider than a
#: sign word and, below, an ALR and a target-projection network.
FORWARD_CONFIGS: dict[str, Config] = {
    **UNIT_CONFIGS,
    "hybrid": parse_config({
        "name": "hybrid", "seed": 5,
        "network": {"layers": [3, 9, 5], "activation": "relu"},
        "rule": {"name": "mgd-weight", "per_layer": ["mgd-node", "mgd-weight"], "delta": 4},
        "numerics": {"acc_bits": 24},
        "hardware": {"lanes": 4, "sample_depth": 4},
    }),
    # weight signs from more than one block of 32 neurons: 40 hidden neurons on 3 lanes, so
    # group 10 (neurons 30, 31, 32) takes its lanes' signs from two sign words
    "wide": parse_config({
        "name": "wide", "seed": 6,
        "network": {"layers": [5, 40, 3], "activation": "relu"},
        "rule": {"name": "mgd-weight", "delta": 2},
        "hardware": {"lanes": 3, "sample_depth": 4},
    }),
}


def config_env(cfg: Config) -> dict[str, str]:
    """Environment that hands ``cfg`` to a testbench (``hdl_tbutil.config``)."""
    return {"PERTURBO_CFG": cfg.model_dump_json()}


def _rule_config(name: str, layers: list[int], rule: dict, *, lanes: int, activation: str = "relu",
                 numerics: dict | None = None, seed: int = 2, hardware: dict | None = None) -> Config:
    return parse_config({
        "name": name, "seed": seed,
        "network": {"layers": layers, "activation": activation},
        "rule": {"batch": 2, "tau_theta": 1, "lr_mult": 3, **rule},
        "numerics": numerics or {},
        "hardware": {"lanes": lanes, "sample_depth": 8, **(hardware or {})},
    })


#: One configuration of every other rule for the whole accelerator (and its co-simulation):
#: lanes that do not divide the layer widths, antithetic pairs and an odd copy, momentum,
#: every activation, narrow G that saturates or wraps, both rounding modes; sample strides
#: that are a power of two (the sequencer shifts the cursor) and that are not (hybrid-node,
#: tpsgd-l2: 12 bytes, on the serial multiplier); 32-bit cycle counters (drtp); tpsgd-l1's
#: dead zone (``rule.dead_zone``; the plain sign runs in ``VERIFY_CONFIGS`` and the digits
#: co-simulation); lane products in logic (``hardware.lane_products``: alr, tpsgd-l2); G's reads
#: registered (``hardware.register_grads``: node, hybrid-alr, drtp, tpsgd-l2: G of one and of
#: two multiplier slices, with and without momentum, on both simulators).
RULE_CONFIGS: dict[str, Config] = {
    "node": _rule_config("node", [7, 6, 3], {"name": "mgd-node", "node_delta": 300, "copies": 2,
                                              "lr_shift": [7, 6], "optimizer": "momentum",
                                              "momentum_shift": 2}, lanes=4,
                         numerics={"grad_bits": 24}, hardware={"register_grads": True}),
    "alr": _rule_config("alr", [8, 5, 3], {"name": "alr", "sigma": 20, "copies": 3, "lr_shift": 8},
                        lanes=3, activation="leaky-relu",
                        numerics={"grad_bits": 18, "rounding": "floor"}, hardware={"lane_products": "logic"}),
    "hybrid-alr": _rule_config("hybrid-alr", [6, 9, 5], {"name": "alr", "per_layer": ["alr", "mgd-weight"],
                                                         "sigma": 9, "delta": 2, "copies": 2,
                                                         "lr_shift": [9, 8]}, lanes=4,
                                hardware={"register_grads": True}),
    "hybrid-node": _rule_config("hybrid-node", [9, 7, 4], {"name": "mgd-node",
                                                           "per_layer": ["mgd-weight", "mgd-node"],
                                                           "node_delta": 64, "delta": 3, "copies": 1,
                                                           "lr_shift": 6, "optimizer": "momentum"},
                                lanes=2, activation="hard-sigmoid",
                                numerics={"grad_bits": 16, "overflow": "wrap"}),
    "drtp": _rule_config("drtp", [8, 6, 3], {"name": "drtp", "batch": 3, "lr_shift": [6, 5]},
                         lanes=4, activation="hard-sigmoid", hardware={"counter_bits": 32, "register_grads": True}),
    "tpsgd-l1": _rule_config("tpsgd-l1", [5, 7, 4], {"name": "tpsgd-l1", "lr_shift": 4,
                                                     "optimizer": "momentum", "dead_zone": 20}, lanes=2),
    "tpsgd-l2": _rule_config("tpsgd-l2", [10, 5, 4], {"name": "tpsgd-l2", "lr_shift": 3, "target_on": 127},
                             lanes=3, activation="leaky-relu",
                             numerics={"grad_bits": 16, "rounding": "floor"},
                             hardware={"lane_products": "logic", "register_grads": True}),
    # lanes that split the inputs (hdl/geometry.py): 8 lanes, 9-4-3, two lanes a neuron in
    # both layers (the first layer's last token an input and the bias, the second's the bias
    # and a padding input; lanes 6 and 7 of the second hold no neuron), antithetic pairs
    # and momentum; and 18-2-2, four lanes a neuron (the second layer one token: two inputs,
    # the bias and padding, whose inputs wait for the first layer; the first layer five
    # tokens, so that a pass outlasts the forward pipe, as the cycle model assumes), G's
    # reads registered
    "split": _rule_config("split", [9, 4, 3], {"name": "mgd-weight", "delta": 3, "copies": 2,
                                                "lr_shift": [6, 5], "optimizer": "momentum",
                                                "momentum_shift": 2}, lanes=8,
                          numerics={"grad_bits": 24}),
    "split4": _rule_config("split4", [18, 2, 2], {"name": "mgd-weight", "delta": 5, "copies": 1,
                                                  "lr_shift": 5}, lanes=8, activation="leaky-relu",
                           hardware={"register_grads": True}),
    # an ALR layer (one lane a neuron) before an mgd-weight layer that splits (4 lanes a neuron)
    "split-alr": _rule_config("split-alr", [6, 5, 2], {"name": "alr", "per_layer": ["alr", "mgd-weight"],
                                                       "sigma": 9, "delta": 2, "copies": 2,
                                                       "lr_shift": [9, 8]}, lanes=8),
}

FORWARD_CONFIGS["alr"] = RULE_CONFIGS["alr"]
for _name in ("split", "split4", "split-alr"):
    FORWARD_CONFIGS[_name] = RULE_CONFIGS[_name]
# target projection: the engine draws B[label] and stores the gated errors; one config per
# error (tl, sign(y - tl) with a dead zone, y - tl) and gate (hard sigmoid, ReLU, leaky ReLU)
for _name in ("drtp", "tpsgd-l1", "tpsgd-l2"):
    FORWARD_CONFIGS[_name] = RULE_CONFIGS[_name]
# target projection with fewer inputs to the hidden layer than lanes: each lane keeps its
# own hash pipe (Geometry.shared_draw is false; the other projection and injection
# configurations share one)
FORWARD_CONFIGS["drtp-narrow"] = _rule_config("drtp-narrow", [3, 6, 3], {"name": "drtp", "lr_shift": 5},
                                              lanes=4, activation="hard-sigmoid")
# MGD node perturbation with the narrowest accumulator allowed: the injection (the
# testbench's node_delta is 2^20) saturates the accumulator at both ends
FORWARD_CONFIGS["node-narrow"] = _rule_config("node-narrow", [6, 5, 3], {"name": "mgd-node", "node_delta": 300,
                                                                       "copies": 2, "lr_shift": 6},
                                              lanes=2, numerics={"acc_bits": 19})


def _digits_config(name: str, hidden: int, rule: dict, *, lanes: int, numerics: dict | None = None,
                   inputs: str = "unsigned") -> Config:
    # 64 inputs and 10 classes: the digits data set, so the whole host path (data, stream) runs
    return parse_config({
        "name": name, "seed": 4,
        "data": {"inputs": inputs},
        "network": {"layers": [64, hidden, 10]},
        "rule": {"batch": 2, "tau_theta": 1, "lr_mult": 3, **rule},
        "numerics": numerics or {},
        "hardware": {"lanes": lanes, "sample_depth": 8},
        "training": {"steps": 40, "eval_every": 20},
    })


#: Small digits networks of the three rule families, for ``perturbo verify`` and the
#: co-simulation waveform test (each is one Verilator build of a minute or two).
VERIFY_CONFIGS: dict[str, Config] = {
    # G and momentum wider than the bus word: the driver moves them through WRITE_HIGH and
    # READ_HIGH (a 24-bit G that saturates is the cocotb "tiny" configuration's)
    "mgd-weight": _digits_config("verify-mgd-weight", 6, {"name": "mgd-weight", "delta": 2, "copies": 3,
                                                          "lr_shift": [7, 6], "optimizer": "momentum",
                                                          "momentum_shift": 2},
                                 lanes=4, numerics={"grad_bits": 48}),
    # centred inputs (negative samples: the ALR sign unit's -1, negative products)
    "alr": _digits_config("verify-alr", 5, {"name": "alr", "sigma": 20, "copies": 2, "lr_shift": 8},
                          lanes=3, numerics={"rounding": "floor"}, inputs="centred"),
    "tpsgd-l1": _digits_config("verify-tpsgd-l1", 7, {"name": "tpsgd-l1", "lr_shift": 4,
                                                      "optimizer": "momentum"}, lanes=4, inputs="centred"),
}
