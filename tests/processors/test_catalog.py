"""The catalog file model: the documented file format, Snowflake identifier normalisation, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infra.seed import CATALOG_PATH
from processors.decision.warehouse_catalog import (
    Catalog,
    CatalogError,
    ColumnInfo,
    TableInfo,
    normalise_identifier,
    normalise_name,
    quote_identifier,
    split_name,
)

DESIGN_EXAMPLE = """
tables:
  ANALYTICS.PUBLIC.CUSTOMERS:
    row_count: 1200000
    bytes: 480000000
    columns:
      ID: NUMBER
      EMAIL: VARCHAR
      SSN: {type: VARCHAR, classification: pii.ssn}
"""


def test_design_md_example(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(DESIGN_EXAMPLE)
    cat = Catalog.load(path)
    t = cat.lookup("analytics.public.customers")
    assert t is not None and cat.table("ANALYTICS.PUBLIC.CUSTOMERS") is t
    assert cat.table("analytics.public.customers") is None  # resolved names are exact
    assert t.name == "ANALYTICS.PUBLIC.CUSTOMERS"
    assert (t.row_count, t.bytes) == (1200000, 480000000)
    assert t.columns == (
        ColumnInfo("ID", "NUMBER"),
        ColumnInfo("EMAIL", "VARCHAR"),
        ColumnInfo("SSN", "VARCHAR", "pii.ssn"),
    )
    assert cat.column("ANALYTICS.PUBLIC.CUSTOMERS.SSN") == ColumnInfo("SSN", "VARCHAR", "pii.ssn")
    assert cat.column("ANALYTICS.PUBLIC.CUSTOMERS.NOPE") is None


def test_json_and_yaml_give_the_same_version(tmp_path: Path) -> None:
    import yaml

    (tmp_path / "c.yaml").write_text(DESIGN_EXAMPLE)
    (tmp_path / "c.json").write_text(json.dumps(yaml.safe_load(DESIGN_EXAMPLE)))
    a, b = Catalog.load(tmp_path / "c.yaml"), Catalog.load(tmp_path / "c.json")
    assert a.version == b.version and len(a.version) == 64


def test_version_changes_with_content() -> None:
    base = {"tables": {"A.B.T": {"columns": {"X": "NUMBER"}}}}
    other = {"tables": {"A.B.T": {"columns": {"X": "NUMBER"}, "row_count": 5}}}
    assert Catalog.from_mapping(base).version != Catalog.from_mapping(other).version
    # names are normalised before hashing: spelling does not change the version
    same = {"tables": {"a.b.t": {"columns": {"x": "number"}}}}
    assert Catalog.from_mapping(base).version == Catalog.from_mapping(same).version


def test_snowflake_identifier_rules() -> None:
    assert normalise_identifier("email") == "EMAIL"
    assert normalise_identifier('"Email"') == "Email"
    assert normalise_identifier('"a""b"') == 'a"b'
    assert normalise_name('analytics."My Schema".t') == "ANALYTICS.My Schema.T"
    assert split_name('a."b.c".d') == ["a", '"b.c"', "d"]
    assert quote_identifier("EMAIL") == "EMAIL" and quote_identifier("Email") == '"Email"'


def test_quoted_names_round_trip() -> None:
    cat = Catalog.from_mapping(
        {"tables": {'db.sch."Mixed"': {"columns": {'"eMail"': {"type": "varchar", "classification": "x"}}}}}
    )
    assert list(cat.tables) == ["DB.SCH.Mixed"]
    assert cat.column("DB.SCH.Mixed.eMail") == ColumnInfo("eMail", "VARCHAR", "x")
    again = Catalog.from_mapping(cat.to_mapping())
    assert again.tables == cat.tables and again.version == cat.version


def test_list_form_columns_and_from_tables() -> None:
    cat = Catalog.from_mapping(
        {"tables": {"A.B.T": {"columns": [{"name": "X", "type": "NUMBER", "classification": "c"}]}}}
    )
    assert cat.column("A.B.T.X") == ColumnInfo("X", "NUMBER", "c")
    built = Catalog.from_tables([TableInfo("A.B.T", (ColumnInfo("X", "NUMBER", "c"),))])
    assert built.version == cat.version
    with pytest.raises(CatalogError):
        Catalog.from_tables([TableInfo("T", (ColumnInfo("X", "NUMBER"),))])


def test_sqlglot_schema_is_built_once_with_exact_names() -> None:
    cat = Catalog.from_mapping({"tables": {'A.B."t"': {"columns": {'"c"': "NUMBER", "D": "VARCHAR"}}}})
    schema = cat.sqlglot_schema()
    assert schema is cat.sqlglot_schema()
    assert schema.mapping == {"A": {"B": {"t": {"c": "NUMBER", "D": "VARCHAR"}}}}


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ([], "expected a mapping"),
        ({"tables": {"T": {"columns": {"X": "NUMBER"}}}}, "not DATABASE.SCHEMA.TABLE"),
        ({"tables": {"A.B.T": {"columns": {}}}}, "no columns"),
        ({"tables": {"A.B.T": {"columns": {"X": 5}}}}, "expected a type"),
        ({"tables": {"A.B.T": {"columns": {"X": "N", "x": "N"}}}}, "duplicate column X"),
        ({"tables": {"A.B.T": {"columns": {"X": "N"}, "row_count": -1}}}, "non-negative"),
        ({"tables": {"A.B.T": {"columns": {"X": "N"}, "rows": 1}}}, "unknown keys"),
        ({"tables": {"A.B.T": {"columns": {"X": {"type": "N", "klass": "c"}}}}}, "unknown keys"),
        ({"tables": {"a.b.t": {"columns": {"X": "N"}}, "A.B.T": {"columns": {"X": "N"}}}}, "listed twice"),
        ({"tables": {'A.B."x': {"columns": {"X": "N"}}}}, "unbalanced"),
        ({"tables": {'A.B."x.y"': {"columns": {"X": "N"}}}}, "dots inside quoted"),
    ],
)
def test_invalid_catalogs_name_the_reason(data: object, reason: str) -> None:
    with pytest.raises(CatalogError) as err:
        Catalog.from_mapping(data)
    assert reason in err.value.reason


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("tables: [unclosed")
    with pytest.raises(CatalogError) as err:
        Catalog.load(bad)
    assert str(bad) in str(err.value)
    with pytest.raises(CatalogError):
        Catalog.load(tmp_path / "missing.yaml")


def test_demo_catalog_loads() -> None:
    cat = Catalog.load(CATALOG_PATH)
    assert cat.column("ANALYTICS.PUBLIC.CUSTOMERS.EMAIL") is not None
    assert cat.table("SECURITY.ADMIN.USERS") is not None
