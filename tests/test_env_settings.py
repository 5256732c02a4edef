"""How :class:`fdo_server.config.EnvSettings` reads the environment: the rules the
services' settings had from pydantic-settings (case-insensitive names, JSON for list, map
and model fields unless ``NoDecode``, ``__`` entries, init over environment over file over
defaults), on small classes of their own and on the services' classes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, Field, ValidationError, field_validator

from fdo_server.config import (
    ConfigError,
    EnvDecodeError,
    EnvSettings,
    NoDecode,
    SettingsConfigDict,
    config_env_var,
    env_prefix,
    load_settings,
)
from manufacturer.settings import ManufacturerSettings
from owner.settings import OwnerSettings

PREFIX = "FDO_ENVTEST_"


class Inner(BaseModel):
    """A model field's type."""

    level: int = 0
    name: str = ""


class Example(EnvSettings):
    """Every kind of field the rules tell apart."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore")

    port: int = 1
    label: str = "default"
    maybe: int | None = None
    path: Path | None = None
    names: list[str] = Field(default_factory=list)
    table: dict[str, int] = Field(default_factory=dict)
    pair: tuple[int, int] = (0, 0)
    inner: Inner = Field(default_factory=Inner)
    either: list[str] | str = ""
    raw: Annotated[list[str], NoDecode] = Field(default_factory=list)

    @field_validator("raw", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return value.split("+") if isinstance(value, str) else value


class Nested(Example):
    """Example with entries in variables of their own (``FDO_ENVTEST_TABLE__KEY``)."""

    model_config = SettingsConfigDict(env_nested_delimiter="__")


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith((PREFIX, "FDO_OWNER_", "FDO_MANUFACTURER_")):
            monkeypatch.delenv(name)


def test_each_field_has_a_variable_in_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("fdo_envtest_port", "8")
    monkeypatch.setenv("Fdo_EnvTest_Label", "mixed")
    monkeypatch.setenv("FDO_ENVTEST_MAYBE", "3")
    monkeypatch.setenv("FDO_ENVTEST_PATH", "/etc/x")
    settings = Example()
    assert (settings.port, settings.label, settings.maybe, settings.path) == (8, "mixed", 3, Path("/etc/x"))
    assert settings.model_fields_set == {"port", "label", "maybe", "path"}


def test_unknown_variables_and_arguments_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FDO_ENVTEST_NO_SUCH_SETTING", "x")
    monkeypatch.setenv("FDO_ENVTEST_PORT__X", "9")  # a plain field has no entries
    unknown: dict[str, Any] = {"no_such_argument": 1}
    settings = Example(**unknown)
    assert settings.port == 1 and not hasattr(settings, "no_such_argument")


def test_list_map_tuple_and_model_fields_are_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FDO_ENVTEST_NAMES", '["a", "b"]')
    monkeypatch.setenv("FDO_ENVTEST_TABLE", '{"one": 1, "Two": "2"}')
    monkeypatch.setenv("FDO_ENVTEST_PAIR", "[4, 5]")
    monkeypatch.setenv("FDO_ENVTEST_INNER", '{"LEVEL": 7, "Name": "x"}')  # model keys in any case
    settings = Example()
    assert settings.names == ["a", "b"]
    assert settings.table == {"one": 1, "Two": 2}  # a map's keys as written
    assert settings.pair == (4, 5)
    assert settings.inner == Inner(level=7, name="x")


@pytest.mark.parametrize("field", ["names", "table", "pair", "inner"])
def test_a_list_map_or_model_field_that_is_not_json_is_an_error(
    field: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(f"{PREFIX}{field.upper()}", "a, b")
    with pytest.raises(EnvDecodeError) as caught:
        Example()
    assert caught.value.field == field
    with pytest.raises(ConfigError, match=f"^{PREFIX}{field.upper()}: not valid JSON; .* e.g. "):
        load_settings(Example)


def test_json_of_the_wrong_shape_is_a_validation_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FDO_ENVTEST_NAMES", '"one"')
    with pytest.raises(ConfigError, match=r"^FDO_ENVTEST_NAMES: Input should be a valid list$"):
        load_settings(Example)


def test_a_union_with_a_list_takes_json_or_plain_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FDO_ENVTEST_EITHER", '["x", "y"]')
    assert Example().either == ["x", "y"]
    monkeypatch.setenv("FDO_ENVTEST_EITHER", "plain, text")
    assert Example().either == "plain, text"


def test_no_decode_gives_the_validators_the_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FDO_ENVTEST_RAW", "a+b+c")
    assert Example().raw == ["a", "b", "c"]
    monkeypatch.setenv("FDO_ENVTEST_RAW", '["a"]')  # not decoded: one item of JSON text
    assert Example().raw == ['["a"]']


def test_the_services_no_decode_fields_take_plain_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FDO_MANUFACTURER_RENDEZVOUS", "http://rv.example:8041, http://10.0.0.5:8041")
    monkeypatch.setenv("FDO_MANUFACTURER_DI_NETWORKS", "10.20.0.0/16 192.0.2.7")
    monkeypatch.setenv("FDO_MANUFACTURER_TRUSTED_PROXIES", '["10.0.0.0/8"]')
    settings = ManufacturerSettings()
    assert settings.rendezvous == ["http://rv.example:8041", "http://10.0.0.5:8041"]
    assert [str(n) for n in settings.di_networks] == ["10.20.0.0/16", "192.0.2.7/32"]
    assert [str(n) for n in settings.trusted_proxies] == ["10.0.0.0/8"]


def test_entries_in_variables_of_their_own_with_a_delimiter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FDO_ENVTEST_TABLE", '{"one": 1, "two": 2}')
    monkeypatch.setenv("FDO_ENVTEST_TABLE__TWO", "22")
    monkeypatch.setenv("FDO_ENVTEST_TABLE__Three", "3")
    monkeypatch.setenv("FDO_ENVTEST_INNER__LEVEL", "5")
    settings = Nested()
    assert settings.table == {"one": 1, "two": 22, "three": 3}  # names in lower case
    assert settings.inner == Inner(level=5)
    assert Example().table == {"one": 1, "two": 2}  # no delimiter: no entries


def test_manufacturer_keys_one_variable_each(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FDO_MANUFACTURER_KEYS", '{"ec256": "/etc/fdo/a.pem"}')
    monkeypatch.setenv("FDO_MANUFACTURER_KEYS__RSA2048", "/etc/fdo/b.pem")
    assert ManufacturerSettings().keys == {"ec256": Path("/etc/fdo/a.pem"), "rsa2048": Path("/etc/fdo/b.pem")}
    monkeypatch.setenv("FDO_MANUFACTURER_KEYS__DSA", "/etc/fdo/c.pem")
    with pytest.raises(ConfigError, match=r"^FDO_MANUFACTURER_KEYS: unknown key kind\(s\) \['dsa'\]"):
        load_settings(ManufacturerSettings)


def test_arguments_over_the_environment_over_the_file_over_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "example.toml"
    config.write_text('port = 2\nlabel = "file"\nnames = ["file"]\n\n[table]\nfile = 1\nboth = 1\n')
    monkeypatch.setenv("FDO_ENVTEST_LABEL", "env")
    monkeypatch.setenv("FDO_ENVTEST_NAMES", '["env"]')
    monkeypatch.setenv("FDO_ENVTEST_TABLE", '{"env": 2, "both": 2}')
    settings = load_settings(Example, config)
    assert type(settings) is Example
    assert (settings.port, settings.label, settings.names) == (2, "env", ["env"])
    assert settings.table == {"file": 1, "env": 2, "both": 2}  # maps merge, the environment wins
    assert settings.pair == (0, 0)  # the default
    assert "pair" not in settings.model_fields_set
    upper: dict[str, Any] = {"LABEL": "argument"}  # argument names in any case too
    direct = Example(**upper, table={"both": 3})
    assert direct.label == "argument"
    assert direct.table == {"env": 2, "both": 3}


def test_owner_arguments_override_its_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FDO_OWNER_PORT", "9000")
    monkeypatch.setenv("FDO_OWNER_TO2_URLS", '["http://env.example"]')
    settings = OwnerSettings(to2_urls=["http://arg.example"])
    assert settings.port == 9000 and settings.to2_urls == ["http://arg.example"]


def test_defaults_are_validated() -> None:
    class BadDefault(EnvSettings):
        model_config = SettingsConfigDict(env_prefix=PREFIX)

        port: int = Field(default=0, ge=1)

    with pytest.raises(ValidationError):
        BadDefault()


def test_prefix_and_config_variable_come_from_model_config() -> None:
    assert env_prefix(Nested) == PREFIX  # inherited
    assert config_env_var(OwnerSettings) == "FDO_OWNER_CONFIG"
    assert Nested.model_config.get("env_nested_delimiter") == "__"
    assert Example.model_config.get("env_nested_delimiter") is None
