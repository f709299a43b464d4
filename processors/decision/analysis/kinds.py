"""Map a parsed top-level sqlglot expression to a statement kind.

Anything not listed is ``unknown`` (fail closed). sqlglot hands back syntax it does not model
as ``exp.Command``: raw text after a first keyword, which may hide anything (a ``->>`` pipe
into a SELECT, a subquery argument). A command is never classified by its first word; only
the two shapes ``command_kind`` can check token by token get a kind, every other command is
``unknown`` (and the ``unparsed_statement`` finding denies it).
"""

from __future__ import annotations

from sqlglot import exp
from sqlglot.dialects.snowflake import Snowflake
from sqlglot.errors import SqlglotError
from sqlglot.tokens import Token, TokenType

__all__ = ["SNOWFLAKE", "command_kind", "command_text", "command_words", "is_location", "statement_kind"]

_DDL = (
    exp.Create,
    exp.Drop,
    exp.TruncateTable,
    exp.Comment,
)
_QUERY = (exp.Select, exp.SetOperation, exp.Subquery, exp.Values)


SNOWFLAKE = Snowflake()  # one dialect instance: its tokenizer settings are built once
# SHOW text is names, patterns and a few keywords; none of these can start another statement or
# compute anything (the keywords are refused even though Snowflake would reject them anyway)
_SHOW_TOKENS = frozenset(
    {TokenType.VAR, TokenType.IDENTIFIER, TokenType.STRING, TokenType.NUMBER, TokenType.DOT}
)
_STATEMENT_STARTS = frozenset(
    {
        TokenType.SELECT, TokenType.WITH, TokenType.INSERT, TokenType.UPDATE, TokenType.DELETE,
        TokenType.MERGE, TokenType.COMMAND, TokenType.EXECUTE, TokenType.SHOW, TokenType.VALUES,
    }
)  # fmt: skip
# CALL arguments that are constants: a column, variable, bind or subquery argument is refused
_CALL_ARGS = frozenset(
    {
        TokenType.STRING,
        TokenType.NUMBER,
        TokenType.COMMA,
        TokenType.DASH,
        TokenType.NULL,
        TokenType.TRUE,
        TokenType.FALSE,
    }
)
_NAME_TOKENS = frozenset({TokenType.VAR, TokenType.IDENTIFIER})


def command_text(node: exp.Command) -> str:
    """The raw text of a command, as sqlglot kept it (its first word, then the rest verbatim)."""
    rest = node.expression
    return f"{node.this} {rest.name if isinstance(rest, exp.Expr) else rest or ''}"


def _tokens(text: str) -> list[Token] | None:
    try:
        return list(SNOWFLAKE.tokenize(text))
    except SqlglotError:
        return None


def _is_word(token: Token) -> bool:
    return (
        token.text.replace("_", "").replace("$", "").isalnum() and token.token_type not in _STATEMENT_STARTS
    )


def _simple_show(tokens: list[Token]) -> bool:
    """``SHOW`` then only names, strings, numbers and dots: ``SHOW GRANTS TO ROLE r``."""
    return len(tokens) > 1 and all(t.token_type in _SHOW_TOKENS or _is_word(t) for t in tokens[1:])


def _literal_call(text: str) -> bool:
    """``name(constant, ...)``: the whole text, a dotted name and constant arguments only."""
    tokens = _tokens(text)
    if not tokens or tokens[-1].token_type != TokenType.R_PAREN:
        return False
    i = 0
    while i < len(tokens) and (tokens[i].token_type in _NAME_TOKENS or _is_word(tokens[i])):
        i += 1
        if i < len(tokens) and tokens[i].token_type == TokenType.DOT:
            i += 1
        else:
            break
    if i == 0 or i >= len(tokens) or tokens[i].token_type != TokenType.L_PAREN:
        return False
    return all(t.token_type in _CALL_ARGS for t in tokens[i + 1 : -1])


def command_kind(node: exp.Command) -> str:
    """The kind of a command whose whole text has a shape we can check, else ``unknown``.

    >>> import sqlglot
    >>> [command_kind(sqlglot.parse_one(s, dialect="snowflake")) for s in (
    ...     "show grants to role r", "call p('x', 1)", "call p((select 1))", "grant role r to user u")]
    ['show', 'call', 'unknown', 'unknown']
    """
    word = str(node.this).upper()
    if word == "SHOW":
        tokens = _tokens(command_text(node))
        return "show" if tokens and _simple_show(tokens) else "unknown"
    if word == "CALL":
        rest = node.expression
        return (
            "call"
            if _literal_call(rest.name if isinstance(rest, exp.Expr) else str(rest or ""))
            else "unknown"
        )
    return "unknown"


def command_words(node: exp.Expr) -> list[str]:
    """The first words of an ``exp.Command`` upper-cased, e.g. ``['EXECUTE', 'IMMEDIATE']``."""
    if not isinstance(node, exp.Command):
        return []
    return command_text(node).upper().split()[:4]


def is_location(node: exp.Expr | None) -> bool:
    """True for a stage (``@s``, ``@~/x``) or URL (``'s3://...'``) rather than a table name."""
    if not isinstance(node, exp.Table):
        return False
    inner = node.this
    if isinstance(inner, (exp.Identifier, exp.Var)):
        return inner.name.startswith("@") and not (isinstance(inner, exp.Identifier) and inner.quoted)
    return isinstance(inner, exp.Literal) and inner.is_string


def statement_kind(node: exp.Expr | None) -> str:
    """One of the statement kinds (docs/policy.md) for one parsed statement.

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
    if isinstance(node, exp.Get):
        return "unload"
    if isinstance(node, (exp.Transaction, exp.Commit, exp.Rollback)):
        return "transaction"
    if isinstance(node, exp.Set):
        return "set"
    if isinstance(node, exp.Command):
        return command_kind(node)
    return "unknown"
