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

#: The forward engine's configurations: the above and a hybrid whose first layer takes
#: injections (MGD node perturbation) through the engine's ``inject`` port.
FORWARD_CONFIGS: dict[str, Config] = {
    **UNIT_CONFIGS,
    "hybrid": parse_config({
        "name": "hybrid", "seed": 5,
        "network": {"layers": [6, 9, 5], "activation": "relu"},
        "rule": {"name": "mgd-weight", "per_layer": ["mgd-node", "mgd-weight"], "delta": 4},
        "numerics": {"acc_bits": 24},
        "hardware": {"lanes": 4, "sample_depth": 4},
    }),
}


def config_env(cfg: Config) -> dict[str, str]:
    """Environment that hands ``cfg`` to a testbench (``hdl_tbutil.config``)."""
    return {"PERTURBO_CFG": cfg.model_dump_json()}
