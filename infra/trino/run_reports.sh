#!/usr/bin/env bash
# Run the audit reports (infra/sql/trino/, generated from infra/sql/duckdb/) on a local Trino.
#
#   infra/trino/run_reports.sh [--home QUERYTRAIL_HOME] [--port N] [REPORT ...]
#
# Trino comes from Maven (infra/trino/pom.xml, `mvn dependency:copy`, so your Maven mirror or
# repository applies) into QUERYTRAIL_JAR_CACHE once; it runs on Java 24+ (TRINO_JAVA_HOME).
# All the work is in infra/trino.py.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
PY="${PYTHON:-$REPO/.venv/bin/python}"
cd "$REPO" && exec "$PY" -m infra.trino "$@"
