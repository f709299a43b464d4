"""``analyse``: parse once, qualify against the catalog, trace lineage, run the finding rules.

Each step runs within a ``Budget`` (``analysis/budget.py``): a text or statement too large to
analyse in bounded time is refused with ``analysis_budget_exceeded`` instead of stalling.
"""

from __future__ import annotations

import logging

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.optimizer.normalize_identifiers import normalize_identifiers
from sqlglot.optimizer.qualify_columns import qualify_columns
from sqlglot.optimizer.qualify_tables import qualify_tables
from sqlglot.tokens import TokenType

from processors.decision.analysis.budget import (
    GC_PAUSE_CHARS,
    Budget,
    BudgetExceeded,
    collection_paused,
    long_chains,
    measure,
    rebalance_connectors,
)
from processors.decision.analysis.columns import (
    collect_outputs,
    collect_predicates,
    output_names,
    star_selects,
)
from processors.decision.analysis.context import Context
from processors.decision.analysis.fingerprint import fingerprint
from processors.decision.analysis.kinds import SNOWFLAKE, statement_kind
from processors.decision.analysis.lineage import Lineage
from processors.decision.analysis.model import Analysis, Classifier, Finding
from processors.decision.analysis.tables import collect_tables
from processors.decision.warehouse_catalog import Catalog, CatalogError, normalise_identifier

__all__ = ["Context", "analyse"]

log = logging.getLogger(__name__)

# kinds whose tables are qualified and whose queries are traced
_TRACED = frozenset({"select", "insert", "update", "delete", "merge", "ddl", "unload", "grant", "describe"})


def _session_ident(value: str | None) -> exp.Identifier | None:
    if not value:
        return None
    try:
        name = normalise_identifier(value)
    except CatalogError:
        return None
    return exp.to_identifier(name, quoted=name != name.upper() or not name.replace("_", "").isalnum())


def _qualify(ctx: Context, selects: list[exp.Select], database: str | None, schema: str | None) -> None:
    node = ctx.node
    assert node is not None
    ctx.star_selects = star_selects(selects)
    normalize_identifiers(node, dialect="snowflake")
    qualify_tables(node, db=_session_ident(schema), catalog=_session_ident(database), dialect="snowflake")
    if node.find(exp.Select) is not None:
        # partial qualification: c.nosuch is reported as unresolved_column by the lineage
        # step instead of sqlglot raising for the whole statement
        qualify_columns(
            node,
            ctx.catalog.sqlglot_schema(),
            expand_alias_refs=True,
            expand_stars=True,
            allow_partial_qualification=True,
        )


def _analyse_one(ctx: Context, budget: Budget, database: str | None, schema: str | None) -> None:
    if ctx.node is None:
        return
    if ctx.kind == "set":
        # SET v = (SELECT ...) reads tables too: trace its query like a SELECT
        sub = ctx.node.find(exp.Subquery)
        if sub is None:
            return
        ctx.node = sub.this
    elif ctx.kind not in _TRACED:
        return
    try:
        rebalance_connectors(long_chains(ctx.node))
        selects: list[exp.Select] = []
        budget.check_shape(measure(ctx.node, selects, drop_positions=True))
        names = output_names(ctx.node) if ctx.kind == "select" else []
        _qualify(ctx, selects, database, schema)
        budget.check_time("qualification")
        ctx.lineage = Lineage(ctx.node, ctx.catalog, lambda fq: ctx.classification(fq) is not None)
        collect_tables(ctx)
        if ctx.kind == "select":
            collect_outputs(ctx, names)
        collect_predicates(ctx)
        budget.check_time("lineage")
    except BudgetExceeded as exc:
        _give_up(ctx)
        ctx.budget_error = str(exc)
        log.info("analysis over budget: %s", exc)
    except (SqlglotError, TypeError, ValueError, KeyError, AttributeError, RecursionError) as exc:
        # sqlglot refuses (or trips over) some valid-looking SQL: fail closed, never "no findings"
        _give_up(ctx)
        ctx.parse_error = f"cannot analyse: {type(exc).__name__}: {str(exc)[:200]}"
        log.info("analysis failed: %s", ctx.parse_error)


def _give_up(ctx: Context) -> None:
    ctx.outputs.clear()
    ctx.failed = True


def _pieces(sql: str) -> list[str]:
    """The text split at Snowflake's ``->>`` pipe operator (outside strings and comments).

    ``show tables ->> select * from $1`` is two statements, the second reading the first's
    result: each is analysed on its own, and together they are a multi-statement request.
    """
    if "->>" not in sql:
        return [sql]
    try:
        tokens = SNOWFLAKE.tokenize(sql)
    except SqlglotError:
        return [sql]  # the parse reports it
    cuts = [t for t in tokens if t.token_type == TokenType.DARROW]
    out, start = [], 0
    for t in cuts:
        out.append(sql[start : t.start])
        start = t.end + 1
    out.append(sql[start:])
    return out


def _parse(sql: str, budget: Budget) -> tuple[list[exp.Expr], str | None, int, bool]:
    """The statements of the text (comment-only ones dropped), an error, the pipe count, and
    whether empty statements were dropped."""
    pieces = _pieces(sql)
    budget.check_statements(len(pieces))  # each piece is parsed on its own: refuse before
    parsed: list[exp.Expr] = []
    empties = False
    for piece in pieces:
        try:
            found = sqlglot.parse(piece, dialect="snowflake")
        except SqlglotError as exc:
            return [], str(exc).splitlines()[0][:300], 0, False
        except (RecursionError, ValueError, TypeError) as exc:  # e.g. thousands of nested parentheses
            return [], f"cannot parse: {type(exc).__name__}", 0, False
        # ``select 1; -- done``: sqlglot keeps the trailing comment as an empty statement
        # (exp.Semicolon) that runs nothing, so it does not make the text multi-statement
        statements = [e for e in found if e is not None and not isinstance(e, exp.Semicolon)]
        if not statements:
            return [], "no statement" if len(pieces) == 1 else "empty statement in a ->> pipe", 0, False
        parsed.extend(statements)
        empties = empties or len(statements) < len(found)
    return parsed, None, len(pieces) - 1, empties


def _without_empties(sql: str) -> str:
    """The text of its one statement: what runs is exactly what was analysed, without the
    empty statements around it (``select 1; -- done``) that the warehouse might count."""
    try:
        tokens = [t for t in SNOWFLAKE.tokenize(sql) if t.token_type != TokenType.SEMICOLON]
    except SqlglotError:
        return sql
    return sql[tokens[0].start : tokens[-1].end + 1] if tokens else sql


def analyse(
    sql: str,
    catalog: Catalog,
    classifier: Classifier,
    *,
    database: str | None = None,
    schema: str | None = None,
) -> Analysis:
    """Analyse one SQL text against the catalog; see docs/architecture.md for the result contract.

    >>> from processors.decision.warehouse_catalog import Catalog
    >>> cat = Catalog.from_mapping({"tables": {"A.B.T": {"columns": {"X": "NUMBER"}}}})
    >>> class NoTags:
    ...     def column_classification(self, c): return None
    ...     def table_tags(self, t): return frozenset()
    >>> analyse("select x from t", cat, NoTags(), database="a", schema="b").tables_read
    ('A.B.T',)
    """
    with collection_paused(len(sql) >= GC_PAUSE_CHARS):
        return _analyse(sql, catalog, classifier, database, schema)


def _analyse(
    sql: str, catalog: Catalog, classifier: Classifier, database: str | None, schema: str | None
) -> Analysis:
    from processors.decision.analysis.findings import run_rules

    budget = Budget()
    fp = fingerprint(sql)
    contexts: list[Context] = []
    try:
        budget.check_text(sql)
        parsed, error, pipes, empties = _parse(sql, budget)
        budget.check_time("parsing")
    except BudgetExceeded as exc:
        parsed, error, pipes, empties = [], None, 0, False
        contexts.append(
            Context(sql, None, "unknown", catalog, classifier, budget_error=str(exc), failed=True)
        )
    if error is not None:
        ctx = Context(sql, None, "unknown", catalog, classifier, parse_error=error)
        contexts.append(ctx)
    for node in parsed:
        ctx = Context(sql, node, statement_kind(node), catalog, classifier)
        contexts.append(ctx)
        try:
            budget.check_statements(len(contexts))
            budget.check_time(f"statement {len(contexts)}")
        except BudgetExceeded as exc:  # the statements before used it all: analyse no more
            _give_up(ctx)
            ctx.budget_error = str(exc)
            break
        _analyse_one(ctx, budget, database, schema)
    findings: list[Finding] = []
    for ctx in contexts:
        for f in run_rules(ctx):
            if f not in findings:
                findings.append(f)
    count = max(len(contexts), len(parsed))  # statements left unanalysed over budget count too
    multi = count > 1
    if multi:
        how = f", chained with ->> ({pipes} pipe{'s' if pipes > 1 else ''})" if pipes else ""
        findings.insert(0, Finding("multi_statement", f"{count} statements in one request{how}"))
    read = set().union(*(c.tables_read for c in contexts))
    written = set().union(*(c.tables_written for c in contexts))
    scanned = set().union(*(c.scanned for c in contexts))
    # whole-table bytes of every table scanned (no selectivity guess); unknown (None) as soon
    # as one scanned table is unresolved or has no statistics, so a size rule never passes on it
    est: int | None = None
    if error is None and contexts and not any(c.failed or c.kind == "unknown" for c in contexts):
        infos = [catalog.table(name) for name in sorted(scanned)]
        if all(t is not None and t.bytes is not None for t in infos):
            est = sum(t.bytes or 0 for t in infos if t is not None)
    one = contexts[0]
    predicates = set().union(*(c.predicates for c in contexts))
    return Analysis(
        statement="multi" if multi else one.kind,
        tables_read=tuple(sorted(read)),
        tables_written=tuple(sorted(written)),
        output_columns=() if multi else tuple(one.outputs),
        predicate_columns=tuple(sorted(predicates)),
        findings=tuple(findings),
        estimated_bytes=est,
        fingerprint=fp,
        parsed=None if multi or error or one.failed else one.node,
        sql=_without_empties(sql) if empties and not multi else sql,
        database=database,
        schema=schema,
    )
