"""Seed the demo warehouse in fakesnow with synthetic data, through the real connector.

Every value is generated from a fixed seed, so the data (and ``SEEDED_PII``, the list of every
raw PII value seeded, used by leak scans) is the same on every machine. Nothing here is a real
person: SSNs are random numbers in the US format, card numbers are random Luhn-valid numbers,
phone numbers use the fictional 555-01xx range, emails are on example.* domains.

``python -m infra.seed --write-catalog`` regenerates infra/catalog/demo.yaml.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

__all__ = [
    "CATALOG_PATH",
    "SCRATCH_TABLE",
    "SEEDED_PII",
    "SEEDED_SECRETS",
    "TABLES",
    "Table",
    "catalog",
    "demo_rows",
    "seed",
    "write_catalog",
]

CATALOG_PATH = Path(__file__).parent / "catalog" / "demo.yaml"
# The one table tests may write to: its rows (and fakesnow's INFORMATION_SCHEMA row_count, which
# does not go down after a DELETE) change during a test session, so assert nothing on its count.
SCRATCH_TABLE = "ANALYTICS.PUBLIC.SCRATCH_EVENTS"
N_CUSTOMERS = 200
N_ORDERS = 3000
N_USERS = 25
_EPOCH = datetime(2025, 1, 1, tzinfo=UTC)

_FIRST = "Ada Alan Grace Linus Barbara Edsger Frances Ken Margaret Dennis Radia Tim Hedy Niklaus Sophie Guido"
_LAST = (
    "Lovelace Turing Hopper Torvalds Liskov Dijkstra Allen Thompson Hamilton Ritchie Perlman Lee Lamarr Wirth"
)
_DOMAINS = ("example.com", "example.org", "mail.example.net")


@dataclass(frozen=True)
class Table:
    """A demo table: its DDL columns (name -> Snowflake type), classifications and statistics."""

    name: str  # DATABASE.SCHEMA.TABLE
    columns: dict[str, str]
    classifications: dict[str, str]
    row_count: int  # the catalog's statistic (what the policy sees), not the seeded row count
    bytes: int


_GB = 1024**3
TABLES: tuple[Table, ...] = (
    Table(
        "ANALYTICS.PUBLIC.CUSTOMERS",
        {"ID": "NUMBER(38,0)", "NAME": "VARCHAR", "EMAIL": "VARCHAR", "SSN": "VARCHAR", "PHONE": "VARCHAR",
         "CARD_NUMBER": "VARCHAR", "CITY": "VARCHAR", "COUNTRY": "VARCHAR", "CREATED_AT": "TIMESTAMP_NTZ"},
        {"NAME": "pii.name", "EMAIL": "pii.email", "SSN": "pii.ssn", "PHONE": "pii.phone", "CARD_NUMBER": "pii.card"},
        row_count=1_200_000, bytes=480_000_000,
    ),
    Table(
        "ANALYTICS.PUBLIC.ORDERS",
        {"ORDER_ID": "NUMBER(38,0)", "CUSTOMER_ID": "NUMBER(38,0)", "AMOUNT": "NUMBER(12,2)", "CURRENCY": "VARCHAR",
         "STATUS": "VARCHAR", "ORDER_DATE": "DATE", "CREATED_AT": "TIMESTAMP_NTZ"},
        {},
        row_count=250_000_000, bytes=40 * _GB,
    ),
    Table(
        "ANALYTICS.PUBLIC.SCRATCH_EVENTS",
        {"ID": "NUMBER(38,0)", "EVENT": "VARCHAR", "PAYLOAD": "VARCHAR", "CREATED_AT": "TIMESTAMP_NTZ"},
        {},
        row_count=0, bytes=0,
    ),
    Table(
        "SECURITY.ADMIN.USERS",
        {"USERNAME": "VARCHAR", "FULL_NAME": "VARCHAR", "ROLE": "VARCHAR", "EMAIL": "VARCHAR",
         "MFA_ENABLED": "BOOLEAN", "MFA_SECRET": "VARCHAR", "LAST_LOGIN": "TIMESTAMP_NTZ"},
        {"FULL_NAME": "pii.name", "EMAIL": "pii.email", "MFA_SECRET": "secret"},
        row_count=N_USERS, bytes=8_192,
    ),
)  # fmt: skip


def _luhn_complete(body: str) -> str:
    """``body`` plus the Luhn check digit."""
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:  # doubled: every second digit counting from the check digit's left
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return body + str((10 - total % 10) % 10)


def _card(rng: random.Random) -> str:
    prefix, length = rng.choice((("4", 16), ("51", 16), ("55", 16), ("37", 15), ("6011", 16)))
    body = prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix) - 1))
    return _luhn_complete(body)


def _ssn(rng: random.Random) -> str:
    area = rng.choice([a for a in range(1, 900) if a != 666])  # never 000, 666 or 9xx
    return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


def demo_rows() -> dict[str, list[tuple[Any, ...]]]:
    """Every seeded row, by table name (deterministic)."""
    rng = random.Random(20250101)  # synthetic data, reproducible on purpose
    first, last = _FIRST.split(), _LAST.split()
    cities = [("Berlin", "DE"), ("Austin", "US"), ("Lyon", "FR"), ("Osaka", "JP"), ("Leeds", "GB")]
    customers = []
    for i in range(1, N_CUSTOMERS + 1):
        f, la = rng.choice(first), rng.choice(last)
        city, country = rng.choice(cities)
        created = (_EPOCH + timedelta(minutes=rng.randint(0, 500_000))).replace(tzinfo=None)
        customers.append((
            i, f"{f} {la}", f"{f.lower()}.{la.lower()}{i}@{rng.choice(_DOMAINS)}", _ssn(rng),
            f"({rng.randint(201, 989)}) 555-01{rng.randint(0, 99):02d}", _card(rng), city, country, created,
        ))  # fmt: skip
    orders = []
    for i in range(1, N_ORDERS + 1):
        day = _EPOCH.date() + timedelta(days=rng.randint(0, 330))
        orders.append((
            100_000 + i, rng.randint(1, N_CUSTOMERS), round(rng.uniform(5, 900), 2), rng.choice(["USD", "EUR"]),
            rng.choice(["placed", "shipped", "delivered", "returned"]), day,
            datetime(day.year, day.month, day.day, rng.randint(0, 23), rng.randint(0, 59)),
        ))  # fmt: skip
    users = []
    for i in range(1, N_USERS + 1):
        f, la = rng.choice(first), rng.choice(last)
        secret = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") for _ in range(32))
        users.append((
            f"{f[0].lower()}{la.lower()}{i}", f"{f} {la}", rng.choice(["SECURITYADMIN", "SYSADMIN", "ACCOUNTADMIN"]),
            f"{f.lower()}.{la.lower()}.admin{i}@example.com", rng.random() > 0.2, secret,
            (_EPOCH + timedelta(minutes=rng.randint(0, 500_000))).replace(tzinfo=None),
        ))  # fmt: skip
    return {
        "ANALYTICS.PUBLIC.CUSTOMERS": customers,
        "ANALYTICS.PUBLIC.ORDERS": orders,
        "ANALYTICS.PUBLIC.SCRATCH_EVENTS": [],
        "SECURITY.ADMIN.USERS": users,
    }


def _pii_values() -> tuple[tuple[str, ...], tuple[str, ...]]:
    rows = demo_rows()
    pii: list[str] = []
    for r in rows["ANALYTICS.PUBLIC.CUSTOMERS"]:
        pii += [r[1], r[2], r[3], r[4], r[5]]  # NAME, EMAIL, SSN, PHONE, CARD_NUMBER
    for r in rows["SECURITY.ADMIN.USERS"]:
        pii += [r[1], r[3]]  # FULL_NAME, EMAIL
    secrets = tuple(r[5] for r in rows["SECURITY.ADMIN.USERS"])  # MFA_SECRET
    return tuple(dict.fromkeys(pii)), secrets


SEEDED_PII, SEEDED_SECRETS = _pii_values()


def catalog() -> dict[str, Any]:
    """The demo catalog in the catalog file format (docs/architecture.md).

    The statistics are the catalog's, not the emulator's: the policy estimates bytes scanned
    from these numbers, so ORDERS is 250 million rows / 40 GB here (a full scan is visibly
    costly) although fakesnow holds only a few thousand rows.
    """
    tables: dict[str, Any] = {}
    for t in TABLES:
        cols: dict[str, Any] = {}
        for col, typ in t.columns.items():
            base = typ.split("(")[0]
            cols[col] = (
                {"type": base, "classification": t.classifications[col]} if col in t.classifications else base
            )
        tables[t.name] = {"row_count": t.row_count, "bytes": t.bytes, "columns": cols}
    return {"tables": tables}


def write_catalog(path: Path = CATALOG_PATH) -> Path:
    import yaml

    header = (
        "# The demo warehouse's catalog (generated by `python -m infra.seed --write-catalog`).\n"
        "# row_count/bytes are what the policy uses to estimate bytes scanned: ORDERS is declared\n"
        "# 250M rows / 40 GB so a full scan is costly, although the emulator holds a few thousand.\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + yaml.safe_dump(catalog(), sort_keys=False), encoding="utf-8")
    return path


def seed(connect_kwargs: dict[str, Any], force: bool = False) -> dict[str, int]:
    """Create and fill the demo tables; skipped when already seeded unless ``force``.

    Returns table -> row count. Uses the real snowflake-connector-python (fakesnow's server), as
    the emulator's administrator: loading data is not querytrail's service user's business.
    """
    import snowflake.connector

    from infra.fakesnow_server import ADMIN_USER

    rows = demo_rows()
    with snowflake.connector.connect(**{**connect_kwargs, "user": ADMIN_USER}) as conn:
        cur = conn.cursor()
        if not force and _already_seeded(cur, rows):
            return {name: len(r) for name, r in rows.items()}
        for t in TABLES:
            db, schema, _ = t.name.split(".")
            cur.execute(f"CREATE DATABASE IF NOT EXISTS {db}")
            cur.execute(f"CREATE SCHEMA IF NOT EXISTS {db}.{schema}")
            ddl = ", ".join(f"{c} {typ}" for c, typ in t.columns.items())
            cur.execute(f"CREATE OR REPLACE TABLE {t.name} ({ddl})")
            marks = ", ".join(["%s"] * len(t.columns))
            data = rows[t.name]
            for start in range(0, len(data), 500):  # bounded statement size for the emulator
                cur.executemany(
                    f"INSERT INTO {t.name} ({', '.join(t.columns)}) VALUES ({marks})",
                    data[start : start + 500],
                )
    return {name: len(r) for name, r in rows.items()}


def _already_seeded(cur: Any, rows: dict[str, list[tuple[Any, ...]]]) -> bool:
    try:
        for name in ("ANALYTICS.PUBLIC.CUSTOMERS", "ANALYTICS.PUBLIC.ORDERS", "SECURITY.ADMIN.USERS"):
            cur.execute(f"SELECT COUNT(*) FROM {name}")
            if cur.fetchone()[0] != len(rows[name]):
                return False
        cur.execute("SELECT COUNT(*) FROM ANALYTICS.PUBLIC.SCRATCH_EVENTS")
    except Exception:  # a missing database/table is the emulator's ProgrammingError
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="seed the demo warehouse / write its catalog")
    parser.add_argument("--write-catalog", action="store_true")
    parser.add_argument("--port", type=int, help="seed the fakesnow server on 127.0.0.1:PORT")
    args = parser.parse_args(argv)
    if args.write_catalog:
        print(write_catalog())
    if args.port:
        from infra.fakesnow_server import connect_kwargs

        print(seed(connect_kwargs(args.port), force=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
