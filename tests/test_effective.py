"""`_effective`: each field's effective value and origin, what ``dbregistry show`` prints; `Registry.origin` of an alias."""

from __future__ import annotations

from pathlib import Path

from dbregistry import Origin, Precedence, Registry
from dbregistry._effective import effective_fields


def registry_of(tmp_path: Path) -> Registry:
    config = tmp_path / "databases.yaml"
    config.write_text("databases:\n  dev:\n    url: sqlite://\n    poolclass: StaticPool\n", encoding="utf-8")
    return Registry.from_yaml(config, environ={})


def test_a_field_written_under_its_alias_has_the_alias_line(tmp_path: Path) -> None:
    registry = registry_of(tmp_path)
    file = str(tmp_path / "databases.yaml")
    assert registry.origin("dev") == Origin(Precedence.YAML, file, file, 2)
    assert registry.origin("dev", "pool_class") == Origin(Precedence.YAML, file, file, 4)


def test_effective_fields_show_defaults_asked_of_sqlalchemy_and_origins(tmp_path: Path) -> None:
    registry = registry_of(tmp_path)
    fields = {row["field"]: row for row in effective_fields(registry, "dev")}
    assert (fields["pool_class"]["value"], fields["pool_class"]["line"]) == ("StaticPool", 4)
    assert (fields["pool_size"]["value"], fields["pool_size"]["origin"]) == (None, "not used by StaticPool")
    assert (fields["pool_recycle"]["value"], fields["pool_recycle"]["origin"]) == (-1, "default")
