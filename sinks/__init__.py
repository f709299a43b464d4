"""The Iceberg audit log: writer, hash chain, replay, verify, auditors' queries."""
