"""privileged_table: the statement touches a table the classifier tags ``privileged``.

Example (policy tags ``SNOWFLAKE.ACCOUNT_USAGE.*``): ``select * from snowflake.account_usage.users``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from processors.decision.analysis.model import Finding

if TYPE_CHECKING:
    from processors.decision.analysis.context import Context

__all__ = ["privileged_table"]


def privileged_table(ctx: Context) -> Iterator[Finding]:
    for table in sorted(ctx.tables_read | ctx.tables_written):
        if "privileged" in ctx.classifier.table_tags(table):
            yield Finding("privileged_table", f"{table} is tagged privileged")
