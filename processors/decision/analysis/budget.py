"""Bounded analysis: what one SQL text may cost before it is refused (fail closed).

Analysis must finish in bounded time whatever the caller sends, or one request could stall
the worker. sqlglot's scope building looks up each column's enclosing clause by walking up
its ancestors, so a column costs its depth in the tree; a parsed chain of n ``AND`` (or ``OR``)
terms is a left-deep tree of depth n, which makes qualification quadratic (5,000 terms took
10-30 s). Two defences:

1. ``rebalance_connectors`` turns long ``AND``/``OR`` chains into balanced trees of depth
   log n. Both are associative, and sqlglot prints a balanced chain as the same text, so the
   statement (and the SQL masking generates from it) means exactly what it meant.
2. ``Budget`` refuses, with the ``analysis_budget_exceeded`` finding, a text longer than
   ``MAX_SQL_CHARS`` or of more than ``MAX_STATEMENTS`` statements, a statement of more than
   ``MAX_NODES`` nodes or ``MAX_SELECTS`` queries (each is a scope sqlglot resolves), nested
   deeper than ``MAX_DEPTH``, or whose columns sit ``MAX_COLUMN_DEPTH`` levels deep in total
   (the work sqlglot's ancestor walks do, e.g. a long ``a + b + c ...`` chain), and any analysis
   that has used more than ``TIME_BUDGET_S`` of CPU time. The structural limits are checked
   before the expensive steps and bound them; the clock is checked between steps (it cannot
   interrupt sqlglot mid-step), as the backstop for shapes the limits do not foresee. The clock
   is the analysing thread's CPU time, not wall time, so a busy machine (other threads,
   other processes) does not turn an ordinary statement into a refusal.

Example: ``select 1 from t where a=0 and a=1 and ... and a=4999`` is analysed in well under a
second; 300,000 characters of SQL -> ``analysis_budget_exceeded``.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlglot import exp

__all__ = [
    "GC_PAUSE_CHARS",
    "MAX_COLUMN_DEPTH",
    "MAX_DEPTH",
    "MAX_NODES",
    "MAX_SELECTS",
    "MAX_SQL_CHARS",
    "MAX_STATEMENTS",
    "TIME_BUDGET_S",
    "Budget",
    "BudgetExceeded",
    "Shape",
    "collection_paused",
    "long_chains",
    "measure",
    "rebalance_connectors",
]

# the worker's default limits.max_sql_bytes: a longer text is refused before it is parsed
MAX_SQL_CHARS = 262_144
MAX_STATEMENTS = 100  # more is refused anyway (multi_statement): do not analyse them all
# analysis is near linear in nodes: ~0.1 s of CPU per 5,000 (a 5,000-term AND chain is 25,000)
MAX_NODES = 60_000
MAX_SELECTS = 1_000
MAX_DEPTH = 1_000
MAX_COLUMN_DEPTH = 400_000  # sum over columns of their depth: sqlglot's ancestor-walk work
TIME_BUDGET_S = 2.0  # CPU seconds per analysed text, checked between steps
# texts from this size up are analysed with the cyclic garbage collector paused (see below)
GC_PAUSE_CHARS = 16_384
# chains shorter than this stay as parsed: rebalancing them would gain nothing
REBALANCE_MIN_TERMS = 32

_CHAINS = (exp.And, exp.Or)
_POSITIONS = ("line", "col", "start", "end")


@contextmanager
def collection_paused(pause: bool) -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a large statement is analysed.

    A sqlglot tree is tens of thousands of objects with parent pointers (cycles), so building
    one triggers many collections, each walking every live object: a third of the time to
    parse 5,000 OR terms. The pause is bounded by the budget, and the garbage is collected
    as soon as it ends. Left as it was when something else had already disabled collection.
    """
    if not pause or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class BudgetExceeded(Exception):
    """Analysis would cost more than its budget; ``str()`` says which limit and by how much."""


@dataclass(frozen=True)
class Shape:
    """Size measures of one statement tree."""

    nodes: int
    depth: int
    column_depth: int  # sum of the depths of every Column node
    selects: int = 0


def long_chains(root: exp.Expr) -> list[exp.Expr]:
    """The roots of the ``AND``/``OR`` chains of at least ``REBALANCE_MIN_TERMS`` terms (a
    chain root is a connector whose parent is not the same connector).

    >>> import sqlglot
    >>> len(long_chains(sqlglot.parse_one("select 1 where " + " or ".join(["a = 1"] * 40))))
    1
    """
    roots = [n for n in root.find_all(*_CHAINS) if type(n.parent) is not type(n)]
    return [r for r in roots if _terms_at_least(r, REBALANCE_MIN_TERMS)]


def measure(
    root: exp.Expr, selects: list[exp.Select] | None = None, *, drop_positions: bool = False
) -> Shape:
    """The tree's shape, in one walk; its SELECT nodes are appended to ``selects`` if given.

    ``drop_positions`` also forgets where each token was in the text (the parser's
    line/col/start/end meta, only used for its own error messages): every later copy of the
    tree (qualification copies identifiers, masking copies the statement and the generator
    copies it again) deep-copies those dicts in Python, 40 % of a copy's cost.

    >>> import sqlglot
    >>> shape = measure(sqlglot.parse_one("select a from t where a = 1 and b = 2"))
    >>> shape.nodes, shape.depth, shape.column_depth, shape.selects
    (16, 5, 9, 1)
    """
    nodes = column_depth = count = 0
    depth = -1
    level = [root]
    while level:  # level by level: the depth of a node is its level, no per-node bookkeeping
        depth += 1
        nodes += len(level)
        below: list[exp.Expr] = []
        for node in level:
            if drop_positions and node._meta is not None and "start" in node._meta:
                meta = node._meta
                for key in _POSITIONS:
                    meta.pop(key, None)
                if not meta:
                    node._meta = None
            kind = type(node)
            if kind is exp.Column:
                column_depth += depth
            elif kind is exp.Select:
                count += 1
                if selects is not None:
                    selects.append(node)  # type: ignore[arg-type]
            below.extend(node.iter_expressions())
        level = below
    return Shape(nodes, depth, column_depth, count)


def _terms_at_least(root: exp.Expr, n: int) -> bool:
    kind = type(root)
    count = 0
    stack = [root]
    while stack:
        node = stack.pop()
        if type(node) is kind:
            stack.append(node.args["expression"])
            stack.append(node.this)
        else:
            count += 1
            if count >= n:
                return True
    return False


def _terms(root: exp.Expr) -> tuple[list[exp.Expr], list[str]]:
    """The operands of a same-type connector chain, left to right, and the chain's comments."""
    kind = type(root)
    terms: list[exp.Expr] = []
    comments: list[str] = []
    stack = [root]
    while stack:
        node = stack.pop()
        if type(node) is kind:
            comments.extend(node.comments or [])
            stack.append(node.args["expression"])
            stack.append(node.this)
        else:
            terms.append(node)
    return terms, comments


def _balanced(kind: type[exp.Expr], terms: list[exp.Expr]) -> exp.Expr:
    if len(terms) == 1:
        return terms[0]
    mid = len(terms) // 2
    return kind(this=_balanced(kind, terms[:mid]), expression=_balanced(kind, terms[mid:]))


def rebalance_connectors(chains: list[exp.Expr]) -> int:
    """Rebuild each chain root (from ``long_chains``) as a balanced tree; how many were rebuilt.

    >>> import sqlglot
    >>> tree = sqlglot.parse_one("select 1 from t where " + " and ".join(f"a = {i}" for i in range(40)))
    >>> before = tree.sql()
    >>> rebalance_connectors(long_chains(tree)), tree.sql() == before, measure(tree).depth
    (1, True, 10)
    """
    done = 0
    for root in chains:
        if root.parent is None:
            continue  # a bare expression, not inside a statement: nothing to replace it in
        terms, comments = _terms(root)
        for term in terms:
            term.parent = None
        new = _balanced(type(root), terms)
        if comments:
            new.add_comments(comments)
        root.replace(new)
        done += 1
    return done


@dataclass
class Budget:
    """The limits of one analysis, and its clock (this thread's CPU time, from construction)."""

    time_s: float = TIME_BUDGET_S
    max_nodes: int = MAX_NODES
    max_selects: int = MAX_SELECTS
    max_statements: int = MAX_STATEMENTS
    max_depth: int = MAX_DEPTH
    max_column_depth: int = MAX_COLUMN_DEPTH
    max_sql_chars: int = MAX_SQL_CHARS
    started: float = field(default_factory=time.thread_time)

    def elapsed(self) -> float:
        return time.thread_time() - self.started

    def check_text(self, sql: str) -> None:
        if len(sql) > self.max_sql_chars:
            raise BudgetExceeded(f"{len(sql):,} characters of SQL, more than {self.max_sql_chars:,}")

    def check_shape(self, shape: Shape) -> None:
        if shape.nodes > self.max_nodes:
            raise BudgetExceeded(f"{shape.nodes:,} syntax nodes, more than {self.max_nodes:,}")
        if shape.selects > self.max_selects:
            raise BudgetExceeded(f"{shape.selects:,} queries (SELECTs), more than {self.max_selects:,}")
        if shape.depth > self.max_depth:
            raise BudgetExceeded(f"nested {shape.depth:,} levels deep, more than {self.max_depth:,}")
        if shape.column_depth > self.max_column_depth:
            raise BudgetExceeded(
                f"columns nested {shape.column_depth:,} levels deep in total, more than"
                f" {self.max_column_depth:,}"
            )

    def check_statements(self, count: int) -> None:
        if count > self.max_statements:
            raise BudgetExceeded(f"more than {self.max_statements:,} statements")

    def check_time(self, step: str) -> None:
        spent = self.elapsed()
        if spent > self.time_s:
            raise BudgetExceeded(
                f"analysis used {spent:.2f} s of CPU by {step}, more than {self.time_s:.2f} s"
            )
