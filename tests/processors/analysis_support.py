"""Shared test helpers for the analysis/masking tests: the test catalog and a classifier.

The classifier mirrors infra/policies/example.yaml's globs so the analyser is tested the way
the policy uses it: catalog classifications first, then column-name globs.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from pathlib import Path

from processors.decision.warehouse_catalog import Catalog

FIXTURES = Path(__file__).parent / "fixtures"
CATALOG = Catalog.load(FIXTURES / "analysis_catalog.yaml")

GLOBS = (
    ("*.*.*.EMAIL", "pii.email"),
    ("*.*.*.*_EMAIL", "pii.email"),
    ("*.*.*.SSN", "pii.ssn"),
    ("*.*.*.PHONE", "pii.phone"),
    ("*.*.*.CARD_NUMBER", "pii.card"),
    ("*.*.*.FULL_NAME", "pii.name"),
    ("*.*.*.MFA_SECRET", "secret"),
    ("*.*.*.PASSWORD*", "secret"),
)
TAGS = (("SECURITY.*.*", "privileged"), ("SNOWFLAKE.ACCOUNT_USAGE.*", "privileged"))
MASKS = {
    "pii.email": "email",
    "pii.ssn": "last4",
    "pii.phone": "last4",
    "pii.card": "last4",
    "pii.name": "hash",
    "secret": "nullify",
    "internal": "redact",
}


class GlobClassifier:
    """Catalog classification first, then the first matching glob (case-insensitive)."""

    def __init__(self, catalog: Catalog = CATALOG) -> None:
        self.catalog = catalog

    def column_classification(self, fq_column: str) -> str | None:
        col = self.catalog.column(fq_column)
        if col is not None and col.classification:
            return col.classification
        for glob, name in GLOBS:
            if fnmatchcase(fq_column.upper(), glob):
                return name
        return None

    def table_tags(self, fq_table: str) -> frozenset[str]:
        return frozenset(tag for glob, tag in TAGS if fnmatchcase(fq_table.upper(), glob))


def _sql(node: object) -> str:
    return node.sql("snowflake").upper()  # type: ignore[attr-defined]


def mask_kind_of(expr: object) -> str | None:
    """Which mask (if any) an expression is, by the shapes masking.py emits (read or output)."""
    from sqlglot import exp

    if isinstance(expr, exp.Alias):
        expr = expr.this
    if isinstance(expr, exp.Literal) and expr.this == "***MASKED***":
        return "redact"
    if isinstance(expr, exp.If) and _sql(expr.args["true"]) == _sql(expr.args["false"]) == "'***MASKED***'":
        return "redact"
    if isinstance(expr, exp.Cast) and _sql(expr.this) == "NULL":
        return "nullify"
    if isinstance(expr, exp.If) and isinstance(expr.args["true"], exp.Cast):
        if _sql(expr.args["true"]) == _sql(expr.args["false"]) and _sql(expr.args["true"].this) == "NULL":
            return "nullify"
    if isinstance(expr, exp.SHA2) and _sql(expr.this).startswith(("TO_VARCHAR(", "TO_CHAR(")):
        return "hash"
    if isinstance(expr, exp.If) and _sql(expr.args["true"]) == "NULL":
        expr = expr.args["false"]  # email: NULL stays NULL
    if isinstance(expr, exp.DPipe) and isinstance(expr.this, exp.Literal):
        right = _sql(expr.expression)
        if expr.this.this == "****@" and (
            "SPLIT_PART(TO_VARCHAR(" in right or "SPLIT_PART(TO_CHAR(" in right
        ):
            return "email"
        if expr.this.this == "***-**-" and right.startswith(("RIGHT(TO_VARCHAR(", "RIGHT(TO_CHAR(")):
            return "last4"
    return None


def assert_reads_masked(
    rewritten: str, catalog: Catalog, classifier: GlobClassifier, masks: dict[str, str]
) -> None:
    """The read-masking property, structurally: every table holding classified columns appears
    only as the single FROM of a derived table that returns each classified column through its
    mask (and nothing else happens in that derived table)."""
    import sqlglot
    from sqlglot import exp

    tree = sqlglot.parse_one(rewritten, dialect="snowflake")
    for table in tree.find_all(exp.Table):
        parts = [table.args.get("catalog"), table.args.get("db"), table.this]
        if not all(isinstance(p, exp.Identifier) for p in parts):
            continue
        fq = ".".join(p.name.upper() for p in parts)  # type: ignore[union-attr]
        info = catalog.table(fq)
        if info is None:
            continue
        classified = {c.name: classifier.column_classification(f"{fq}.{c.name}") for c in info.columns}
        classified = {k: v for k, v in classified.items() if v}
        if not classified:
            continue
        select = table.parent.parent if isinstance(table.parent, exp.From) else None
        assert isinstance(select, exp.Select), (fq, "is read outside a masking derived table", rewritten)
        assert isinstance(select.parent, exp.Subquery), (fq, "derived table is not a subquery", rewritten)
        for arg in ("joins", "where", "group", "having", "laterals", "qualify", "match", "connect"):
            assert not select.args.get(arg), (fq, arg, "inside the masking derived table", rewritten)
        projected = {p.alias_or_name.upper(): p for p in select.expressions}
        for name, cls_ in classified.items():
            assert name in projected, (fq, name, rewritten)
            assert mask_kind_of(projected[name]) == masks.get(cls_, "redact"), (fq, name, rewritten)


def outermost_projections(tree: object) -> list[list[object]]:
    """Projections of every branch of the outermost SELECT / set operation."""
    from sqlglot import exp

    node = tree
    while isinstance(node, exp.Subquery):
        node = node.this
    if isinstance(node, exp.SetOperation):
        return outermost_projections(node.this) + outermost_projections(node.expression)
    assert isinstance(node, exp.Select), type(node)
    return [list(node.expressions)]
