from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from slimasr.config import check_numbers, config_to_dict, load_config, parse_overrides
from slimasr.errors import ConfigError


@dataclass
class Inner:
    hidden: int = 32  # units
    dropout: float = 0.1  # probability


@dataclass
class Outer:
    name: str = "crnn"  # family
    rates: tuple[float, ...] = (0.9, 1.0, 1.1)  # speed factors
    inner: Inner = field(default_factory=Inner)  # nested section
    path: Path | None = None  # optional file


def test_defaults_file_and_overrides_compose(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("name: conformer\ninner:\n  hidden: 64\n")
    cfg = load_config(Outer, cfg_file, ["inner.dropout=0.25", "rates=[1.0, 1.2]", "path=/x/y"])
    assert cfg == Outer(name="conformer", rates=(1.0, 1.2), inner=Inner(hidden=64, dropout=0.25), path=Path("/x/y"))
    assert config_to_dict(cfg) == {"name": "conformer", "rates": [1.0, 1.2],
                                   "inner": {"hidden": 64, "dropout": 0.25}, "path": "/x/y"}


def test_int_is_accepted_for_float_but_not_the_reverse():
    assert load_config(Outer, None, ["inner.dropout=0"]).inner.dropout == 0.0
    with pytest.raises(ConfigError, match=r"inner.hidden: expected an integer, got 1.5"):
        load_config(Outer, None, ["inner.hidden=1.5"])


def test_unknown_keys_are_rejected_with_their_name():
    with pytest.raises(ConfigError, match=r"inner: unknown key\(s\) hiden"):
        load_config(Outer, {"inner": {"hiden": 3}})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) nmae"):
        load_config(Outer, None, ["nmae=x"])


def test_bad_files_give_one_line_errors(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config(Outer, missing)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError) as e:
        load_config(Outer, bad)
    assert "bad.yaml: not valid YAML/JSON" in str(e.value) and "\n" not in str(e.value)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(ConfigError, match="scalar.yaml: expected a mapping"):
        load_config(Outer, scalar)


def test_parse_overrides_nests_and_parses_yaml_scalars():
    assert parse_overrides(["a.b=1e-3", "c=true", "--d-e=text"]) == {"a": {"b": 1e-3}, "c": True, "d_e": "text"}
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_overrides(["novalue"])


@dataclass
class Ranged:
    rate: float = 0.5  # share
    size: int | None = None  # optional count

    def __post_init__(self) -> None:
        check_numbers("ranged", self, positive=("size",), fractions=("rate",))


@pytest.mark.parametrize("override, message", [
    ("inner.dropout=nan", "inner.dropout: expected a finite number, got nan"),
    ("inner.dropout=.inf", "inner.dropout: expected a finite number, got inf"),
    ("inner.dropout=-.inf", "inner.dropout: expected a finite number, got -inf"),
    (f"inner.dropout={10 ** 400}", "inner.dropout: expected a finite number, got 1000"),
    ("rates=[1.0, .nan]", r"rates\[1\]: expected a finite number, got nan"),
])
def test_numbers_must_be_finite(override, message):
    with pytest.raises(ConfigError, match=f"^{message}"):
        load_config(Outer, None, [override])


@pytest.mark.parametrize("values, message", [
    ({"rate": 1.5}, "ranged.rate must be a finite number in [0, 1], got 1.5"),
    ({"rate": float("nan")}, "ranged.rate must be a finite number in [0, 1], got nan"),
    ({"size": 0}, "ranged.size must be a finite number > 0, got 0"),
    ({"size": True}, "ranged.size must be a finite number > 0, got True"),
])
def test_check_numbers_names_the_field(values, message):
    with pytest.raises(ConfigError) as info:
        Ranged(**values)
    assert str(info.value) == message
    assert Ranged(rate=0.0, size=None).rate == 0.0  # the bounds and None (unset) pass


def test_a_config_error_from_post_init_is_not_prefixed_again():
    with pytest.raises(ConfigError) as info:
        load_config(Ranged, {"rate": 1.5})
    assert str(info.value) == "ranged.rate must be a finite number in [0, 1], got 1.5"


def test_config_error_is_also_a_value_error():
    with pytest.raises(ValueError):
        load_config(Outer, None, ["nmae=x"])
