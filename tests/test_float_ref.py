"""Float reference rules: estimators against the true gradient, training, checkpoints.

Measured figures (torch 2.13 CPU, 30 seeds, 16-12-4 network, batch 32, float64;
cosine with the autograd gradient, min / mean over seeds, and the projection
ratio <G, g> / |g|^2 that checks the normalisation):

=========================  ==============  ===============  ==============  ===============
estimator                  relu            leaky-relu       hard-sigmoid    ratio (all)
=========================  ==============  ===============  ==============  ===============
MGD weight, K = 4000       0.964 / 0.970   0.965 / 0.970    0.964 / 0.970   0.96 .. 1.05
MGD node, K = 2000         0.993 / 0.996   0.993 / 0.996    0.995 / 0.997   0.95 .. 1.08
LR, 512 antithetic copies  0.991 / 0.997   0.993 / 0.997    0.993 / 0.998   0.96 .. 1.04
ALR, 512 antithetic        0.860 / 0.929   0.806 / 0.888    0.907 / 0.936   ~0.12 (biased)
=========================  ==============  ===============  ==============  ===============

Hybrids (relu, 2000 antithetic copies), per-layer cosine min / mean:
ES (weight_sigma 0.01) + LR: layer 0 0.63 / 0.83, layer 1 0.999 / 1.0;
ES + ALR: layer 0 0.58 / 0.83, layer 1 0.84 / 0.92.

Digits (64-32-10, Adam, batch 32, 1000 steps, 20 % test split; min / mean / max
over model seeds 1..6 x data-order seeds 0..1): BP lr 5e-3 0.950 / 0.963 / 0.972
(1500 or 2000 steps: 0.953 min, it saturates there); DRTP (hard-sigmoid) 0.919 /
0.935 / 0.950 (with ReLU it does not learn: 0.2-0.56); tpSGD-l1 (relu) 0.906 /
0.928 / 0.953; tpSGD-l2 (relu) 0.889 / 0.924 / 0.958.  ALR (16 antithetic copies
per sample, sigma 0.1, batch 8, lr 3e-3): 0.658 / 0.719 / 0.797 after 1000
steps, 0.769 / 0.840 / 0.889 after 2000.  The tests below use model seed 1, data
order seed 0: BP 0.972, DRTP 0.942, tpSGD-l1 0.947, tpSGD-l2 0.928, ALR 0.844.

The tests run single-threaded: these tensors are tiny, and on a loaded 2-core
machine torch's intra-op thread pool makes them 5-30x slower.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from perturbo.backend import TrainingBackend
from perturbo.config import parse_config
from perturbo.golden.float_ref import (
    FloatModel,
    batch_cost,
    bp_grad,
    cosine_similarity,
    init_weights,
    make_feedback_matrices,
    perturbative_grad,
    target_projection_grad,
)

ACTIVATIONS = ["relu", "leaky-relu", "hard-sigmoid"]


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _problem(seed: int, batch: int = 32):
    g = torch.Generator().manual_seed(seed)
    params = init_weights([16, 12, 4], g, 1.0, torch.float64)
    x = torch.randint(0, 128, (batch, 16), generator=g).to(torch.float64) / 128
    labels = torch.randint(0, 4, (batch,), generator=g)
    return g, params, x, labels


def _ratio(est: list[torch.Tensor], true: list[torch.Tensor]) -> float:
    e = torch.cat([t.reshape(-1) for t in est])
    g = torch.cat([t.reshape(-1) for t in true])
    return float(e @ g / (g @ g))


# -- estimators -------------------------------------------------------------------------


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("seed", range(5))
def test_estimators_align_with_true_gradient(activation: str, seed: int) -> None:
    g, params, x, labels = _problem(seed)
    kw = {"activation": activation}
    true = bp_grad(params, x, labels, **kw)
    est = {
        "mgd-weight": perturbative_grad(params, x, labels, g, ["mgd-weight"] * 2, copies=4000, **kw)[0],
        "mgd-node": perturbative_grad(params, x, labels, g, ["mgd-node"] * 2, copies=2000, **kw)[0],
        "lr": perturbative_grad(params, x, labels, g, ["lr"] * 2, copies=512, antithetic=True, **kw)[0],
        "alr": perturbative_grad(params, x, labels, g, ["alr"] * 2, copies=512, antithetic=True, **kw)[0],
    }
    cos = {k: cosine_similarity(v, true) for k, v in est.items()}
    ratio = {k: _ratio(v, true) for k, v in est.items()}
    print(f"{activation} seed {seed}: cos", {k: round(v, 3) for k, v in cos.items()},
          "ratio", {k: round(v, 3) for k, v in ratio.items()})
    # measured minima over 30 seeds: 0.964, 0.993, 0.991, 0.806 (see module docstring)
    assert cos["mgd-weight"] > 0.85
    assert cos["mgd-node"] > 0.9
    assert cos["lr"] > 0.9
    assert cos["alr"] > 0.6
    # the 2023 MGD normalisation and LR are unbiased: the projection ratio is ~1
    # (measured 0.95 .. 1.08)
    for k in ("mgd-weight", "mgd-node", "lr"):
        assert 0.8 < ratio[k] < 1.2, (k, ratio[k])


@pytest.mark.parametrize("node_mode", ["lr", "alr"])
@pytest.mark.parametrize("seed", range(3))
def test_hybrid_layers_align(node_mode: str, seed: int) -> None:
    g, params, x, labels = _problem(seed)
    true = bp_grad(params, x, labels)
    est, _ = perturbative_grad(params, x, labels, g, ["es", node_mode], copies=2000, antithetic=True)
    cos = [cosine_similarity([a], [b]) for a, b in zip(est, true, strict=True)]
    print(f"es+{node_mode} seed {seed}: per-layer cos", [round(c, 3) for c in cos])
    # measured per-layer minima over 30 seeds: es 0.58; lr 0.999, alr 0.84
    assert cos[0] > 0.45
    assert cos[1] > 0.6


def _reference_estimate(params, x, labels, gen, modes, copies, antithetic, chunk_size):
    """perturbative_grad written out sample by sample and copy by copy (float64)."""
    delta, sigma, weight_sigma, target_on = 0.01, 0.1, 0.01, 0.75
    n_batches, batch = x.shape[:2]
    n_draws = (copies + 1) // 2 if antithetic else copies
    per_chunk = max(1, chunk_size // copies)
    grads = [torch.zeros_like(w) for w in params]

    def run(ws, inp, node_noise):
        ins, h = [], inp
        for k, w in enumerate(ws):
            ins.append(torch.cat([h, torch.ones(1, dtype=h.dtype)]))
            z = w @ ins[-1] + node_noise[k]
            h = torch.relu(z) if k < len(ws) - 1 else z
        return 0.5 * float(((h - target_on * torch.eye(4, dtype=h.dtype)[lab]) ** 2).sum()), ins

    for t0 in range(0, n_batches, per_chunk):
        nt = min(n_batches, t0 + per_chunk) - t0
        draws = []
        for w, m in zip(params, modes, strict=True):
            shape = tuple(w.shape) if m in ("mgd-weight", "es") else (
                1 if m == "mgd-node" else batch, w.shape[0])
            if m.startswith("mgd"):
                s = torch.randint(0, 2, (nt, n_draws, *shape), generator=gen, dtype=torch.int8)
                draws.append((s.double() * 2 - 1) * delta)
            else:
                scale = weight_sigma if m == "es" else sigma
                draws.append(torch.randn((nt, n_draws, *shape), generator=gen,
                                         dtype=torch.float64) * scale)
        for t in range(nt):
            for c in range(copies):
                d, a = (c // 2, (-1) ** c) if antithetic else (c, 1)
                nus = [a * dr[t, d] for dr in draws]
                for n in range(batch):
                    lab = labels[t0 + t, n]
                    zero = [torch.zeros(w.shape[0], dtype=w.dtype) for w in params]
                    l0, clean_in = run(params, x[t0 + t, n], zero)
                    ws = [w + nu if m in ("mgd-weight", "es") else w
                          for w, nu, m in zip(params, nus, modes, strict=True)]
                    node = [zero[k] if m in ("mgd-weight", "es") else
                            nus[k][0 if m == "mgd-node" else n] for k, m in enumerate(modes)]
                    loss, noisy_in = run(ws, x[t0 + t, n], node)
                    dc = loss - l0
                    for k, m in enumerate(modes):
                        s2 = {"mgd-weight": delta, "mgd-node": delta, "es": weight_sigma}.get(
                            m, sigma) ** 2
                        if m in ("mgd-weight", "es"):
                            grads[k] += dc * nus[k] / s2 / batch
                        elif m == "alr":
                            grads[k] += dc * torch.outer(node[k].sign(), noisy_in[k].sign()) / batch
                        else:
                            inp = clean_in[k] if m == "mgd-node" else noisy_in[k]
                            grads[k] += dc * torch.outer(node[k], inp) / s2 / batch
    return [g / (n_batches * copies) for g in grads]


@pytest.mark.parametrize("chunk_size", [4, 1024])
@pytest.mark.parametrize("antithetic", [False, True])
@pytest.mark.parametrize(
    "modes", [["mgd-weight"] * 2, ["mgd-node"] * 2, ["lr", "alr"], ["es", "mgd-node"]]
)
def test_perturbative_grad_matches_explicit_loop(modes, antithetic: bool, chunk_size: int) -> None:
    """The vectorised, chunked estimator equals section 6 of docs/numerics.md written out:
    per sample dC = L - L0, G += dC * theta (* x) / s^2, the 2023 MGD normalisation
    1 / (K delta^2) sum dC theta; mgd-node correlates with the baseline input."""
    g = torch.Generator().manual_seed(7)
    params = init_weights([6, 5, 4], g, 1.0, torch.float64)
    params = [w + 0.1 * torch.randn(w.shape, generator=g, dtype=torch.float64) for w in params]
    x = torch.rand(3, 2, 6, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (3, 2), generator=g)
    kw = {"copies": 3, "antithetic": antithetic, "chunk_size": chunk_size}
    est, _ = perturbative_grad(params, x, labels, torch.Generator().manual_seed(5), modes, **kw)
    ref = _reference_estimate(params, x, labels, torch.Generator().manual_seed(5), modes, **kw)
    for a, b in zip(est, ref, strict=True):
        torch.testing.assert_close(a, b)


def test_estimators_accept_one_batch_per_perturbation() -> None:
    g, params, x, labels = _problem(3)
    true = bp_grad(params, x, labels)
    est, _ = perturbative_grad(params, x.expand(400, -1, -1), labels.expand(400, -1), g,
                               ["mgd-weight"] * 2, copies=10)
    assert cosine_similarity(est, true) > 0.85


@pytest.mark.parametrize("variant", ["drtp", "tpsgd-l1", "tpsgd-l2"])
def test_target_projection_output_layer_is_delta_rule(variant: str) -> None:
    g, params, x, labels = _problem(2)
    feedback = make_feedback_matrices([16, 12, 4], g, dtype=torch.float64)
    est, loss = target_projection_grad(params, x, labels, feedback, variant=variant)
    true = bp_grad(params, x, labels)
    torch.testing.assert_close(est[-1], true[-1])
    assert est[0].shape == params[0].shape
    assert loss == pytest.approx(float(batch_cost(params, x, labels)))


# -- the training backend ---------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    d = load_digits()
    x = np.round(d.data * 127 / 16).astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=0.2, stratify=d.target,
                                          random_state=0)
    return tuple(torch.from_numpy(a) for a in (xtr, xte, ytr, yte))  # type: ignore[return-value]


def _train(model: FloatModel, cfg, xtr, ytr, steps: int, seed: int = 0) -> None:
    n = cfg.rule.samples_per_step
    g = torch.Generator().manual_seed(seed)
    perm, pos = torch.randperm(len(xtr), generator=g), 0
    for _ in range(steps):
        if pos + n > len(perm):
            perm, pos = torch.randperm(len(xtr), generator=g), 0
        idx = perm[pos : pos + n]
        pos += n
        model.train_step(xtr[idx], ytr[idx])


def _accuracy(model: FloatModel, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model.predict(x).argmax(1) == y).double().mean())


@pytest.mark.parametrize(
    ("rule", "activation", "floor"),
    [
        ("bp", "relu", 0.95),  # this seed 0.972; 0.950-0.972 over 12 seeds
        ("drtp", "hard-sigmoid", 0.85),  # this seed 0.942; 0.919-0.950
        ("tpsgd-l1", "relu", 0.85),  # this seed 0.947; 0.906-0.953
        ("tpsgd-l2", "relu", 0.85),  # this seed 0.928; 0.889-0.958
    ],
)
def test_digits_accuracy(digits, rule: str, activation: str, floor: float) -> None:
    xtr, xte, ytr, yte = digits
    cfg = parse_config({
        "seed": 1,
        "network": {"layers": [64, 32, 10], "activation": activation},
        "rule": {"name": rule, "batch": 32, "float_lr": 0.005},
    })
    model = FloatModel(cfg)
    _train(model, cfg, xtr, ytr, steps=1000)
    acc = _accuracy(model, xte, yte)
    print(f"{rule} ({activation}): test accuracy {acc:.3f}")
    assert acc >= floor


def test_digits_alr_learns(digits) -> None:
    xtr, xte, ytr, yte = digits
    cfg = parse_config({
        "seed": 1,
        "rule": {"name": "alr", "batch": 8, "copies": 16, "float_lr": 0.003},
    })
    model = FloatModel(cfg, sigma=0.1)
    _train(model, cfg, xtr, ytr, steps=1000)
    acc = _accuracy(model, xte, yte)
    print(f"alr: test accuracy {acc:.3f}")
    assert acc >= 0.5  # this seed 0.844; 0.658-0.797 over 12 seeds (chance: 0.1)


def test_float_model_is_a_backend() -> None:
    model = FloatModel(parse_config({}))
    assert isinstance(model, TrainingBackend)


def test_train_step_takes_samples_per_step() -> None:
    cfg = parse_config({"rule": {"name": "mgd-weight", "tau_theta": 3, "batch": 4}})
    model = FloatModel(cfg)
    x = torch.randint(0, 128, (12, 64))
    y = torch.randint(0, 10, (12,))
    assert np.isfinite(model.train_step(x, y))
    with pytest.raises(ValueError, match="exactly 12 samples"):
        model.train_step(x[:8], y[:8])


STATE_CASES = {
    "bp": ({"name": "bp"}, {}),
    "alr": ({"name": "alr", "copies": 4}, {}),
    "mgd-weight": ({"name": "mgd-weight", "tau_theta": 2}, {}),
    "mgd-node": ({"name": "mgd-node", "tau_theta": 2}, {}),
    "tpsgd-l1": ({"name": "tpsgd-l1"}, {}),
    "drtp-sgd": ({"name": "drtp"}, {"optimizer": "sgd", "momentum": 0.9}),
    "hybrid": ({"per_layer": ["mgd-weight", "alr"], "copies": 2, "tau_theta": 2}, {}),
    "es+lr": ({"name": "alr", "copies": 4}, {"modes": ["es", "lr"]}),
    "mgd-shared": ({"name": "mgd-weight", "tau_theta": 2, "batch": 4},
                   {"share_perturbation": True}),
}


@pytest.mark.parametrize("case", list(STATE_CASES))
def test_state_dict_round_trip(case: str) -> None:
    rule, kwargs = STATE_CASES[case]
    cfg = parse_config({"seed": 3, "network": {"layers": [64, 16, 10]}, "rule": rule})
    n = cfg.rule.samples_per_step
    g = torch.Generator().manual_seed(11)
    batches = [
        (torch.randint(0, 128, (n, 64), generator=g), torch.randint(0, 10, (n,), generator=g))
        for _ in range(6)
    ]
    a = FloatModel(cfg, **kwargs)
    for x, y in batches[:3]:
        a.train_step(x, y)
    # resume into a model that started elsewhere (another seed): the state must override it
    b = FloatModel(cfg.model_copy(update={"seed": 99}), **kwargs)
    # through the trainer's checkpoint format: torch.save, torch.load(weights_only=True)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    b.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    for x, y in batches[3:]:
        la, lb = a.train_step(x, y), b.train_step(x, y)
        assert la == lb
    assert a.step == b.step == 6
    for wa, wb in zip(a.state_dict()["weights"], b.state_dict()["weights"], strict=True):
        assert torch.equal(wa, wb)
    assert not torch.equal(a.state_dict()["weights"][0], FloatModel(cfg, **kwargs).params[0])
