"""Configuration files: every example validates, and every kind of mistake is named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from perturbo.cli import main
from perturbo.config import Config, ConfigError, Rule, load_config, parse_config

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yaml"))


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.stem)
def test_example_validates(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.name == path.stem, "the run directory runs/<name> should match the file name"
    assert cfg.network.layers[-1] == 10


def test_examples_cover_every_rule() -> None:
    configs = [load_config(p) for p in EXAMPLE_FILES]
    digits = [c for c in configs if c.data.dataset.value == "digits"]
    assert {c.rule.name for c in digits if c.rule.per_layer is None} == set(Rule)
    assert all(c.network.layers == [64, 32, 10] for c in digits)
    hybrids = [c for c in digits if c.rule.per_layer is not None]
    assert hybrids and {Rule.ALR, Rule.MGD_WEIGHT} <= set(hybrids[0].layer_rules())
    fashion = {c.rule.name for c in configs if c.data.dataset.value == "fashion-mnist"}
    assert fashion == set(Rule)


def test_unknown_key_lists_allowed_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "data:\n  datset: digits\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "data.datset" in msg and str(path) in msg
    assert "dataset, validation_fraction, test_fraction, train_limit" in msg
    assert "did you mean 'dataset'" in msg


def test_unknown_top_level_key() -> None:
    with pytest.raises(ConfigError, match=r"netwrk = .*allowed top-level keys: name, seed, data"):
        parse_config({"netwrk": {}})


def test_bad_enum_value() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"rule": {"name": "hebbian"}})
    assert "rule.name = 'hebbian'" in str(err.value)
    assert "'mgd-weight'" in str(err.value)


def test_hash_stages_per_register_names_the_allowed_values() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"hardware": {"hash_stages_per_register": 4}})
    assert "hardware.hash_stages_per_register = 4" in str(err.value)
    assert "1, 2, 3 or 6" in str(err.value)


def test_update_lanes_must_divide_lanes() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"hardware": {"lanes": 12, "update_lanes": 5}})
    assert "hardware.update_lanes = 5 does not divide hardware.lanes = 12: give one of 1, 2, 3, 4, 6, 12" \
        in str(err.value)
    with pytest.raises(ConfigError, match=r"hardware\.update_lanes = 0"):
        parse_config({"hardware": {"update_lanes": 0}})
    assert parse_config({"hardware": {"lanes": 12, "update_lanes": 4}}).hardware.update_width == 4
    assert parse_config({"hardware": {"lanes": 12}}).hardware.update_width == 12


def test_acc_bits_too_narrow() -> None:
    with pytest.raises(ConfigError, match=r"numerics\.acc_bits = 22 is too narrow"):
        parse_config({"numerics": {"acc_bits": 22}})
    parse_config({"numerics": {"acc_bits": 23}})  # exactly enough for 64 inputs


def test_shifts_count_mismatch() -> None:
    with pytest.raises(ConfigError, match=r"network\.shifts has 3 entries .* 2 layers"):
        parse_config({"network": {"layers": [64, 32, 10], "shifts": [7, 7, 7]}})


def test_out_of_range_value_names_key() -> None:
    with pytest.raises(ConfigError, match=r"rule\.batch = 0"):
        parse_config({"rule": {"batch": 0}})


def test_dead_zone_is_tpsgd_l1_only() -> None:
    assert parse_config({"rule": {"name": "tpsgd-l1", "dead_zone": 16}}).rule.dead_zone == 16
    assert parse_config({"rule": {"name": "drtp"}}).rule.dead_zone == 0
    with pytest.raises(ConfigError, match=r"rule\.dead_zone = 4 applies to .* tpsgd-l1 only; rule\.name is "
                                          r"tpsgd-l2"):
        parse_config({"rule": {"name": "tpsgd-l2", "dead_zone": 4}})
    with pytest.raises(ConfigError, match=r"rule\.dead_zone = 256"):
        parse_config({"rule": {"name": "tpsgd-l1", "dead_zone": 256}})


def test_malformed_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "rule:\n  name: alr\n    sigma: [1, 2\n")
    with pytest.raises(ConfigError, match=r"malformed YAML in .*cfg\.yaml: .* at line 3, column \d+$") as err:
        load_config(path)
    assert "\n" not in str(err.value), "the CLI prints the message as one line"


def test_top_level_must_be_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read configuration"):
        load_config(tmp_path / "nope.yaml")


def test_config_show_prints_resolved_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    path = EXAMPLES / "digits-alr.yaml"
    assert main(["config", "show", str(path)]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["rule"]["name"] == "alr"
    assert "numerics" in shown and "hardware" in shown  # defaults filled in
    assert Config.model_validate(shown) == load_config(path)


def test_config_show_error_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "rule:\n  name: alr\n  sgima: 3\n")
    assert main(["config", "show", str(path)]) == 2
    err = capsys.readouterr().err
    assert "rule.sgima" in err and "did you mean 'sigma'" in err
    assert "Traceback" not in err


def test_console_script_error_has_no_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, "numerics:\n  overflow: clamp\n")
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from perturbo.cli import main; sys.exit(main())",
         "config", "show", str(path)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert "numerics.overflow = 'clamp'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
