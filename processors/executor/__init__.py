"""The executor service: the only process holding Snowflake credentials.

``service`` is the process (consume authorisations, run them, commit in order); ``runner`` runs
one authorisation; ``ledger`` is its at-most-once record; ``cost`` reads back what a statement
cost; ``catalog_sync`` builds the warehouse catalog from INFORMATION_SCHEMA; ``results`` and
``scrub`` make rows and error texts safe to publish; ``warehouse_history`` reads QUERY_HISTORY for
``querytrail reconcile``.
"""
