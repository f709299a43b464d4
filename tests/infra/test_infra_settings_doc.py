"""docs/settings.md lists every setting (the one documented place, per CONVENTIONS.md)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from querytrail.settings import Settings, SnowflakeProfile

DOC = Path(__file__).resolve().parents[2] / "docs" / "settings.md"


def _env_names(model: type[BaseModel], prefix: str) -> list[str]:
    names = []
    for name, field in model.model_fields.items():
        key = (field.alias or name).upper()
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel) and ann is not SnowflakeProfile:
            names += _env_names(ann, f"{prefix}{key}__")
        else:
            names.append(f"{prefix}{key}")
    return names


def test_every_setting_has_a_row() -> None:
    text = DOC.read_text(encoding="utf-8")
    missing = [n for n in _env_names(Settings, "QUERYTRAIL_") if f"`{n}`" not in text]
    assert not missing, f"add rows to docs/settings.md for: {missing}"
