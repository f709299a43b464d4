"""Map a parsed top-level sqlglot expression to a statement kind.

Anything not listed is ``unknown`` (fail closed): in particular sqlglot's ``exp.Command``
fallback for syntax it does not model, except the few commands we recognise by keyword.
"""

from __future__ import annotations

from sqlglot import exp

__all__ = ["command_words", "is_location", "statement_kind"]

_DDL = (
    exp.Create,
    exp.Drop,
    exp.TruncateTable,
    exp.Comment,
)
_QUERY = (exp.Select, exp.SetOperation, exp.Subquery, exp.Values)


def command_words(node: exp.Expr) -> list[str]:
    """The first words of an ``exp.Command`` upper-cased, e.g. ``['EXECUTE', 'IMMEDIATE']``."""
    if not isinstance(node, exp.Command):
        return []
    rest = node.expression
    text = f"{node.this} {rest.name if isinstance(rest, exp.Expr) else rest or ''}"
    return text.upper().split()[:4]


def is_location(node: exp.Expr | None) -> bool:
    """True for a stage (``@s``, ``@~/x``) or URL (``'s3://...'``) rather than a table name."""
    if not isinstance(node, exp.Table):
        return False
    inner = node.this
    if isinstance(inner, (exp.Identifier, exp.Var)):
        return inner.name.startswith("@") and not (isinstance(inner, exp.Identifier) and inner.quoted)
    return isinstance(inner, exp.Literal) and inner.is_string


def statement_kind(node: exp.Expr | None) -> str:
    """One of the kinds in ENGINE.md for one parsed statement.

    >>> import sqlglot
    >>> statement_kind(sqlglot.parse_one("use role sysadmin", dialect="snowflake"))
    'use'
    """
    if node is None:
        return "unknown"
    if isinstance(node, _QUERY):
        return "select"
    if isinstance(node, (exp.Insert, exp.MultitableInserts)):
        return "insert"
    if isinstance(node, exp.Update):
        return "update"
    if isinstance(node, exp.Delete):
        return "delete"
    if isinstance(node, exp.Merge):
        return "merge"
    if isinstance(node, exp.Alter):
        return "set" if str(node.args.get("kind") or "").upper() == "SESSION" else "ddl"
    if isinstance(node, _DDL) or type(node).__name__ in ("Undrop", "AlterRename"):
        return "ddl"
    if isinstance(node, (exp.Grant, exp.Revoke)):
        return "grant"
    if isinstance(node, exp.Copy):
        # COPY INTO <location> unloads; COPY INTO <table> loads (a write)
        return "unload" if is_location(node.this) else "insert"
    if isinstance(node, exp.Use):
        return "use"
    if isinstance(node, (exp.Show, exp.ListStage)):
        return "show"
    if isinstance(node, exp.Describe):
        return "describe"
    if isinstance(node, exp.Put):
        return "other"
    if isinstance(node, (exp.Transaction, exp.Commit, exp.Rollback)):
        return "transaction"
    if isinstance(node, exp.Set):
        return "set"
    words = command_words(node)
    if words[:1] == ["CALL"]:
        return "call"
    if words[:1] == ["GET"]:
        return "unload"
    if words[:1] == ["GRANT"]:
        return "grant"
    if words[:1] == ["SHOW"]:
        return "show"
    return "unknown"
