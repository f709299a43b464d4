"""The decision core, pure: SQL analysis, policy, masking at the read, detectors, approvals state,
execution authorisations.

Imports nothing but ``schemas``, the kernel's pure modules (``querytrail.settings``,
``querytrail.keys``, ``querytrail.identity``' types), sqlglot and the standard library: no Kafka,
faust, Snowflake or Iceberg code (``tests/architecture`` enforces it). Everything here is
unit-tested without a broker; the worker and the executor call it.
"""
