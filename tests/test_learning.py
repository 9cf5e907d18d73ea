"""Every bit-exact integer rule learns sklearn digits, in a CI-sized run.

The full runs (bench/golden_accuracy.py, README) reach 90 % or more; these
shortened runs assert a floor below what the same steps reached when measured
(the figure measured is in each row's comment), on the validation split.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from perturbo.backend import make_backend
from perturbo.config import load_config, parse_config
from perturbo.data import load_dataset
from perturbo.train import evaluate, train

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# config, steps, floor on validation accuracy
CASES = [
    ("digits-tpsgd-l1", 2000, 0.82),  # measured 0.868
    ("digits-tpsgd-l2", 2000, 0.80),  # measured 0.847
    ("digits-drtp", 2000, 0.88),  # measured 0.938
    ("digits-mgd-node", 6000, 0.80),  # measured 0.861
    ("digits-alr", 4000, 0.84),  # measured 0.889 (centred inputs; 0.819 unsigned)
    ("digits-mgd-weight", 6000, 0.78),  # measured 0.819 (sign words, session 13; 0.847 with a word per weight)
]


@pytest.mark.parametrize(("name", "steps", "floor"), CASES, ids=[c[0] for c in CASES])
def test_integer_rule_learns_digits(name: str, steps: int, floor: float, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    data = load_config(EXAMPLES / f"{name}.yaml").model_dump(mode="json")
    data["training"] = {"steps": steps, "eval_every": steps}
    cfg = parse_config(data)
    splits = load_dataset(cfg)
    backend = make_backend(cfg, "golden")
    train(cfg, backend, tmp_path, progress=False, splits=splits, backend_name="golden")
    acc = evaluate(cfg, backend, "val", splits=splits)
    print(f"{name}: {steps} steps, validation accuracy {acc:.3f}")
    assert acc >= floor, f"{name} reached only {acc:.3f} after {steps} steps (floor {floor})"
