"""Trace columns of a qualified sqlglot tree back to catalog columns.

Works on the output of ``sqlglot.optimizer.qualify`` (every column carries its source alias,
stars are expanded where the catalog knows the table) and its scopes. A column reaches a
catalog column through aliases, CTEs, derived tables, set operations (by position), scalar
subqueries, lateral FLATTEN (the flattened values are the input column's values), ``VALUES``
rows (by name or by ``$n`` position) and ``PIVOT`` (a pivoted cell carries the aggregated and
the pivot columns; the other columns pass through).

A source is *pass-through* when the value reaches the output unchanged apart from case,
trimming or a cast; anything else (concatenation, SPLIT_PART, CASE, aggregates, ...) makes it
a *derived* source. ``COUNT`` arguments are not sources at all: a count carries no value.
Columns that cannot be resolved are recorded and still mapped to every candidate table, so a
classification by column-name glob keeps applying (fail closed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from sqlglot import exp
from sqlglot.optimizer.scope import Scope, traverse_scope

from processors.decision.warehouse_catalog import Catalog, CatalogError, normalise_identifier

__all__ = ["OPAQUE", "Lineage", "Sources", "partial_name", "table_fq"]

Sources = dict[str, bool]  # fq column -> pass-through?
OPAQUE = "?"  # a source key meaning "depends on something only known at run time"

_PASSTHROUGH = (exp.Upper, exp.Lower, exp.Trim, exp.Cast, exp.TryCast, exp.Paren, exp.Alias, exp.ToChar)
_NO_VALUE = (exp.Count, exp.ApproxDistinct)
_FLATTEN_NO_VALUE = frozenset({"SEQ", "INDEX"})
_SUBQUERY = (exp.Select, exp.SetOperation)


def table_fq(table: exp.Table) -> str | None:
    """``DB.SCHEMA.TABLE`` of a qualified table node, None when not a plain 3-part name."""
    if not isinstance(table.this, exp.Identifier):
        return None  # IDENTIFIER('...'), a stage, a table function
    db = table.args.get("db")
    cat = table.args.get("catalog")
    if not isinstance(db, exp.Identifier) or not isinstance(cat, exp.Identifier):
        return None
    return f"{cat.name}.{db.name}.{table.name}"


def partial_name(table: exp.Table) -> str:
    """A best-effort name for an unresolvable table, ``?`` for unknown parts."""
    if not isinstance(table.this, exp.Identifier):
        return table.this.sql("snowflake")  # IDENTIFIER('x'), @stage
    parts = [table.args.get("catalog"), table.args.get("db"), table.this]
    return ".".join(p.name if isinstance(p, exp.Identifier) else "?" for p in parts)


def _merge(into: Sources, more: Mapping[str, bool], passthrough: bool = True) -> None:
    for fq, pure in more.items():
        into[fq] = into.get(fq, False) or (pure and passthrough)


@dataclass
class Lineage:
    """Column lineage for one qualified statement; build once, query many times."""

    root: exp.Expr
    catalog: Catalog
    # is this catalog column classified? A PIVOT over a classified column stays unresolved
    classified: Callable[[str], bool] = lambda fq: False
    scopes: list[Scope] = field(init=False)
    unresolved_tables: set[str] = field(default_factory=set)
    unresolved_columns: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.scopes = (
            traverse_scope(self.root) if isinstance(self.root, exp.Query) or self._has_query() else []
        )
        self._scope_of = {id(sc.expression): sc for sc in self.scopes}
        self._memo: dict[tuple[int, str, str], Sources] = {}

    def _has_query(self) -> bool:
        return self.root.find(exp.Select) is not None

    def scope_for(self, node: exp.Expr) -> Scope | None:
        return self._scope_of.get(id(node))

    # tables ---------------------------------------------------------------------------------
    def table_name(self, table: exp.Table) -> str:
        """Resolved name, or a ``?``-padded partial name recorded as unresolved."""
        fq = table_fq(table)
        if fq is None or self.catalog.table(fq) is None:
            name = fq or partial_name(table)
            self.unresolved_tables.add(name)
            return name
        return fq

    # columns --------------------------------------------------------------------------------
    def column_sources(self, scope: Scope | None, col: exp.Column, sources: Mapping | None = None) -> Sources:
        """Catalog columns whose values flow into ``col`` as seen from ``scope``."""
        key = (id(scope), col.table, col.name)
        if sources is None and key in self._memo:
            return self._memo[key]
        self._memo[key] = {}  # cycle guard (recursive CTEs)
        found = self._column_sources(scope, col, sources)
        if sources is None:
            self._memo[key] = found
        return found

    def _lookup(self, scope: Scope | None, alias: str) -> exp.Table | Scope | None:
        while scope is not None:  # correlated references reach the enclosing scopes
            src = scope.sources.get(alias)
            if src is not None:
                return src
            scope = scope.parent
        return None

    def _column_sources(self, scope: Scope | None, col: exp.Column, sources: Mapping | None) -> Sources:
        name = col.name
        alias = col.table
        if isinstance(col.this, exp.Star):  # t.* inside an expression, e.g. OBJECT_CONSTRUCT(t.*)
            return self.all_columns(scope, alias or None, sources)
        if not alias:
            return self._unqualified(scope, col, sources)
        src = sources.get(alias) if sources is not None else self._lookup(scope, alias)
        if src is None and sources is None:
            pivoted = self._pivot_sources(scope, alias, name)
            if pivoted is not None:
                return pivoted
        if src is None:
            # never treat what cannot be traced as clean
            self.unresolved_columns.add(f"{alias}.{name}")
            return {OPAQUE: False}
        return self._from_source(src, name)

    @staticmethod
    def _selected(scope: Scope | None) -> dict[str, exp.Table | Scope]:
        """Sources in this scope's FROM/JOINs (not every CTE that happens to be visible)."""
        if scope is None:
            return {}
        return {alias: src for alias, (_, src) in scope.selected_sources.items()}

    def all_columns(self, scope: Scope | None, alias: str | None, sources: Mapping | None = None) -> Sources:
        """Every column a ``*`` (or ``alias.*``) inside an expression reads."""
        cands = dict(sources) if sources is not None else self._selected(scope)
        if alias is not None:
            picked = cands.get(alias)
            if picked is None and sources is None:
                picked = self._lookup(scope, alias)
            cands = {alias: picked} if picked is not None else {}
        out: Sources = {}
        if not cands:
            return {OPAQUE: False}
        for src in cands.values():
            if isinstance(src, exp.Table):
                fq = table_fq(src)
                info = self.catalog.table(fq) if fq else None
                if info is None:
                    self.table_name(src)
                    out[OPAQUE] = False
                    continue
                for c in info.columns:
                    _merge(out, {f"{fq}.{c.name}": False})
            elif isinstance(src, Scope) and isinstance(src.expression, _SUBQUERY):
                for i in range(len(src.expression.named_selects)):
                    _merge(out, self.position_sources(src, i), passthrough=False)
            elif isinstance(src, Scope) and isinstance(src.expression, exp.Values):
                for i in range(len(self._values_names(src.expression))):
                    _merge(out, self.values_sources(src, src.expression, i), passthrough=False)
            else:
                out[OPAQUE] = False
        return out

    def _unqualified(self, scope: Scope | None, col: exp.Column, sources: Mapping | None) -> Sources:
        """qualify left it unqualified: unknown column, or ambiguous. Map it to every candidate."""
        cands = dict(sources) if sources is not None else self._selected(scope)
        out: Sources = {}
        hits = 0
        for src in cands.values():
            if isinstance(src, exp.Table):
                fq = table_fq(src)
                info = self.catalog.table(fq) if fq else None
                if info is not None and info.column(col.name) is None:
                    continue
                if info is not None:
                    hits += 1
                _merge(out, {f"{fq or partial_name(src)}.{col.name}": True})
                if fq is None:
                    out[OPAQUE] = False
            elif isinstance(src, Scope):
                names = src.expression.named_selects if isinstance(src.expression, _SUBQUERY) else []
                if col.name in names:
                    hits += 1
                    _merge(out, self._from_source(src, col.name))
        if hits != 1 or len(out) != 1:
            self.unresolved_columns.add(col.name)
        if not out:
            out[OPAQUE] = False  # no candidate source at all: unknowable, not clean
        return out

    def _from_source(self, src: exp.Table | Scope, name: str) -> Sources:
        if isinstance(src, exp.Table):
            fq = self.table_name(src)
            info = self.catalog.table(fq)
            if info is not None and info.column(name) is None:
                self.unresolved_columns.add(f"{fq}.{name}")
            if table_fq(src) is None:  # IDENTIFIER($t), a stage, no session schema: unknowable
                return {f"{fq}.{name}": True, OPAQUE: False}
            return {f"{fq}.{name}": True}
        expr = src.expression
        # a recursive CTE refers to itself through a bare branch of its base case: use the
        # traversed scope of that same query, which knows its sources
        src = self.scope_for(expr) or src
        if isinstance(expr, exp.Lateral) and isinstance(expr.this, exp.Subquery):
            sub = self.scope_for(expr.this.this)  # LATERAL (SELECT c.email AS e) x: x.e is c.email
            if sub is not None:
                return self.projection_sources(sub, name)
        if isinstance(expr, exp.UDTF):
            # LATERAL FLATTEN(input => c.tags) AS f: f.VALUE etc. are pieces of c.tags
            if name in _FLATTEN_NO_VALUE:
                return {}
            out: Sources = {}
            for inner in expr.find_all(exp.Column):
                _merge(out, self.column_sources(src, inner), passthrough=False)
            return out
        return self.projection_sources(src, name)

    def _pivot_sources(self, scope: Scope | None, alias: str, name: str) -> Sources | None:
        """``p.name`` where ``p`` is the alias of a PIVOT in this scope's FROM/JOINs, else None.

        A pivoted cell (a name in the pivot's output columns) is an aggregate of the
        aggregated columns over the rows whose pivot column matched: it derives from both.
        Any other name is a grouping column of the pivoted source and passes through. A
        PIVOT over a classified column, an UNPIVOT or a chain of pivots stays unresolved.
        """
        select = scope.expression if scope is not None else None
        if not isinstance(select, exp.Select):
            return None
        from_ = select.args.get("from_")
        nodes = [from_.this] if isinstance(from_, exp.From) else []
        nodes += [j.this for j in select.args.get("joins") or []]
        for node in nodes:
            pivots = node.args.get("pivots") or []
            if not pivots or pivots[-1].alias != alias:
                continue
            pivot = pivots[0]
            source = self._lookup(scope, node.alias_or_name)
            if len(pivots) > 1 or pivot.args.get("unpivot") or source is None:
                self.unresolved_columns.add(f"{alias}.{name}")
                return {OPAQUE: False}
            inputs = [*pivot.expressions, *(f.this for f in pivot.args.get("fields") or [])]
            if name in {c.name for c in pivot.args.get("columns") or []}:
                out: Sources = {}
                for part in inputs:
                    _merge(out, self.expr_sources(scope, part), passthrough=False)
                    for col in part.find_all(exp.Column):  # COUNT(x) carries no value, yet pivots on x
                        _merge(out, self.column_sources(scope, col), passthrough=False)
                hidden = sorted(fq for fq in out if fq != OPAQUE and self.classified(fq))
                if hidden:
                    self.unresolved_columns.add(f"{alias}.{name} (PIVOT over classified {', '.join(hidden)})")
                    out[OPAQUE] = False
                return out
            used = {c.name for part in inputs for c in part.find_all(exp.Column)}
            if name in used:
                self.unresolved_columns.add(f"{alias}.{name}")
                return {OPAQUE: False}
            return self._from_source(source, name)
        return None

    def values_sources(self, scope: Scope, values: exp.Values, index: int) -> Sources:
        """Sources of the ``index``-th column of ``VALUES (...), (...)``: constants have none."""
        out: Sources = {}
        for row in values.expressions:
            items = row.expressions if isinstance(row, exp.Tuple) else [row]
            if index >= len(items):
                self.unresolved_columns.add(f"VALUES column {index + 1}")
                return {OPAQUE: False}
            item = items[index]
            if item.find(exp.Column, exp.Query, exp.Parameter, exp.DynamicIdentifier, exp.Star) is None:
                continue  # a constant
            if any(self.scope_for(q) is None for q in item.find_all(exp.Select, exp.SetOperation)):
                self.unresolved_columns.add(f"VALUES column {index + 1}")
                out[OPAQUE] = False
                continue
            _merge(out, self.expr_sources(scope, item))
        return out

    @staticmethod
    def _values_names(values: exp.Values) -> list[str]:
        alias = values.args.get("alias")
        return [c.name for c in alias.columns] if isinstance(alias, exp.TableAlias) else []

    def projection_sources(self, scope: Scope, name: str) -> Sources:
        """Sources of the projection ``name`` of a query scope (set operations by position)."""
        expr = scope.expression
        outer = [c.upper() if isinstance(c, str) else c for c in scope.outer_columns or []]
        if name in outer and isinstance(expr, _SUBQUERY):
            # WITH r (n, e) AS (...): the column list renames the projections by position
            return self.position_sources(scope, outer.index(name))
        if isinstance(expr, exp.SetOperation):
            try:
                index = expr.named_selects.index(name)
            except ValueError:
                self.unresolved_columns.add(name)
                return {OPAQUE: False}
            return self.position_sources(scope, index)
        if isinstance(expr, exp.Values):
            names = self._values_names(expr)
            if name in names:
                return self.values_sources(scope, expr, names.index(name))
            self.unresolved_columns.add(name)
            return {OPAQUE: False}
        if not isinstance(expr, exp.Select):
            return {}
        for proj in expr.selects:
            if proj.alias_or_name == name:
                return self.expr_sources(scope, proj)
        self.unresolved_columns.add(name)
        return {OPAQUE: False}

    def position_sources(self, scope: Scope, index: int) -> Sources:
        """Sources of the ``index``-th output of a select or set operation scope."""
        expr = scope.expression
        if isinstance(expr, exp.SetOperation):
            out: Sources = {}
            for branch in scope.set_operation_scopes:
                _merge(out, self.position_sources(branch, index))
            return out
        if isinstance(expr, exp.Select) and index < len(expr.selects):
            return self.expr_sources(scope, expr.selects[index])
        return {}

    def expr_sources(self, scope: Scope | None, expr: exp.Expr, sources: Mapping | None = None) -> Sources:
        """Catalog columns an expression's value depends on, with pass-through flags."""
        core = expr
        while isinstance(core, _PASSTHROUGH):
            core = core.this
        if isinstance(core, exp.Column):
            return dict(self.column_sources(scope, core, sources))
        if isinstance(core, exp.Parameter):
            return self._positional(scope, core, sources)
        out: Sources = {}
        for node in self._walk(expr):
            if isinstance(node, exp.Column):
                _merge(out, self.column_sources(scope, node, sources), passthrough=False)
            elif isinstance(node, exp.DynamicIdentifier):
                _merge(out, self._dynamic(scope, node, sources), passthrough=False)
            elif isinstance(node, exp.Parameter):
                _merge(out, self._positional(scope, node, sources), passthrough=False)
            elif isinstance(node, exp.Star) and node is not expr:
                _merge(out, self.all_columns(scope, None, sources), passthrough=False)
            elif isinstance(node, _SUBQUERY):
                sub = self.scope_for(node)
                if sub is not None:
                    for i in range(len(node.named_selects) or 1):
                        _merge(out, self.position_sources(sub, i), passthrough=False)
        return out

    def _dynamic(self, scope: Scope | None, node: exp.DynamicIdentifier, sources: Mapping | None) -> Sources:
        """IDENTIFIER('email') is the column EMAIL; IDENTIFIER($v) is unknowable (OPAQUE)."""
        arg = node.this
        if isinstance(arg, exp.Literal) and arg.is_string:
            try:
                name = normalise_identifier(arg.this)
            except CatalogError:
                name = ""
            if name and "." not in name:
                return self._unqualified(scope, exp.column(exp.to_identifier(name)), sources)
        self.unresolved_columns.add(node.sql("snowflake"))
        return {OPAQUE: False}

    def _positional(self, scope: Scope | None, node: exp.Parameter, sources: Mapping | None) -> Sources:
        """``$3`` is the third column of the only source; ``$var`` is a session variable (opaque)."""
        arg = node.this
        cands = dict(sources) if sources is not None else self._selected(scope)
        if not (isinstance(arg, exp.Literal) and not arg.is_string and arg.this.isdigit()) or len(cands) != 1:
            self.unresolved_columns.add(node.sql("snowflake"))
            return {OPAQUE: False}
        index = int(arg.this) - 1
        src = next(iter(cands.values()))
        if isinstance(src, exp.Table):
            fq = table_fq(src)
            info = self.catalog.table(fq) if fq else None
            if info is not None and 0 <= index < len(info.columns):
                return {f"{fq}.{info.columns[index].name}": True}
        elif isinstance(src, Scope) and isinstance(src.expression, _SUBQUERY):
            if 0 <= index < len(src.expression.named_selects):
                return dict(self.position_sources(src, index))
        elif isinstance(src, Scope) and isinstance(src.expression, exp.Values):
            width = len(self._values_names(src.expression))
            if 0 <= index < width:  # SELECT $1 FROM VALUES (1), (2)
                return self.values_sources(src, src.expression, index)
        self.unresolved_columns.add(node.sql("snowflake"))
        return {OPAQUE: False}

    @staticmethod
    def _walk(expr: exp.Expr) -> Iterable[exp.Expr]:
        stack = [expr]
        while stack:
            node = stack.pop()
            yield node
            if isinstance(node, (*_SUBQUERY, *_NO_VALUE)) and node is not expr:
                continue  # subqueries are resolved as their own scope; counts carry no value
            if isinstance(node, _NO_VALUE):
                continue
            stack.extend(node.iter_expressions())

    def columns_in(
        self, scope: Scope | None, nodes: Iterable[exp.Expr | None], sources: Mapping | None = None
    ) -> Sources:
        """Catalog columns referenced anywhere in ``nodes`` (not inside nested subqueries)."""
        out: Sources = {}
        for top in nodes:
            if top is None:
                continue
            stack = [top]
            while stack:
                node = stack.pop()
                if isinstance(node, exp.Column):
                    if not node.meta.get("qt_alias_ref"):  # alias refs were resolved by the caller
                        _merge(out, self.column_sources(scope, node, sources), passthrough=False)
                    continue
                if isinstance(node, exp.Parameter):
                    _merge(out, self._positional(scope, node, sources), passthrough=False)
                    continue
                if isinstance(node, _SUBQUERY):
                    continue
                stack.extend(node.iter_expressions())
        return out
