#!/usr/bin/env bash
# Start a local Trino (Java 25) with the Iceberg connector on querytrail's catalog and run the
# three report queries of infra/sql/trino/ against audit.events.
#
#   infra/trino/run_reports.sh [QUERYTRAIL_HOME]      (default: $QUERYTRAIL_HOME or ~/.querytrail)
#
# Env: TRINO_VERSION (default 476, the newest on Maven Central when written), JAVA25_HOME (default: the temurin 25 under /usr/lib/jvm),
#      TRINO_PORT (default 18085), QT_CACHE (default ~/.querytrail/cache).
# Downloads trino-server and trino-cli from Maven Central once into the cache.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
QT_HOME="${1:-${QUERYTRAIL_HOME:-$HOME/.querytrail}}"
VERSION="${TRINO_VERSION:-476}"
PORT="${TRINO_PORT:-18085}"
CACHE="${QT_CACHE:-$HOME/.querytrail/cache}/trino-$VERSION"
JAVA25_HOME="${JAVA25_HOME:-$(ls -d /usr/lib/jvm/temurin-25* 2>/dev/null | head -1)}"
MAVEN="https://repo1.maven.org/maven2/io/trino"
[ -x "$JAVA25_HOME/bin/java" ] || { echo "Trino needs Java 25: set JAVA25_HOME" >&2; exit 2; }
[ -f "$QT_HOME/iceberg/catalog.db" ] || { echo "no audit catalog under $QT_HOME/iceberg (run querytrail sink)" >&2; exit 2; }

mkdir -p "$CACHE"
if [ ! -d "$CACHE/trino-server-$VERSION" ]; then
  curl -fsSL "$MAVEN/trino-server/$VERSION/trino-server-$VERSION.tar.gz" | tar -xz -C "$CACHE"
fi
[ -f "$CACHE/trino-cli" ] || { curl -fsSL -o "$CACHE/trino-cli" "$MAVEN/trino-cli/$VERSION/trino-cli-$VERSION-executable.jar"; chmod +x "$CACHE/trino-cli"; }
SERVER="$CACHE/trino-server-$VERSION"
JARS="$HOME/.querytrail/cache/spark-jars"
[ -f "$JARS/sqlite-jdbc-3.46.1.3.jar" ] || mvn -q -f "$REPO/infra/spark/pom.xml" dependency:copy-dependencies -DexcludeTransitive=true -DoutputDirectory="$JARS"
cp "$JARS/sqlite-jdbc-3.46.1.3.jar" "$SERVER/plugin/iceberg/"

RUN="$(mktemp -d)"
mkdir -p "$RUN/etc/catalog" "$RUN/data"
for f in config.properties jvm.config node.properties catalog/iceberg.properties; do
  sed -e "s#@HOME@#$QT_HOME#g" -e "s#@PORT@#$PORT#g" -e "s#@DATA@#$RUN/data#g" "$HERE/etc/$f" > "$RUN/etc/$f"
done
JAVA_HOME="$JAVA25_HOME" PATH="$JAVA25_HOME/bin:$PATH" "$SERVER/bin/launcher" --etc-dir "$RUN/etc" --data-dir "$RUN/data" start
trap 'JAVA_HOME="$JAVA25_HOME" PATH="$JAVA25_HOME/bin:$PATH" "$SERVER/bin/launcher" --etc-dir "$RUN/etc" --data-dir "$RUN/data" stop >/dev/null; rm -rf "$RUN"' EXIT
for _ in $(seq 1 120); do
  curl -fs "http://127.0.0.1:$PORT/v1/info" | grep -q '"starting":false' && break
  sleep 1
done
CLI=("$JAVA25_HOME/bin/java" --enable-native-access=ALL-UNNAMED -jar "$CACHE/trino-cli" --server "127.0.0.1:$PORT" --output-format ALIGNED)
for report in pii-exposure privileged-access costly-scans; do
  echo "== $report"
  sql="$(sed -e "s/{{since}}/TIMESTAMP '1970-01-01 00:00:00 UTC'/g" -e "s/{{until}}/TIMESTAMP '9999-01-01 00:00:00 UTC'/g" \
             -e "s/{{bytes_threshold}}/10737418240/g" "$REPO/infra/sql/trino/$report.sql" | grep -v '^--')"
  "${CLI[@]}" --execute "$sql"
done
