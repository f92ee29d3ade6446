"""The database side: the `pe_metadata` table, the sampling manifest, and bulk writes.

Everything that decides "is this file done?" happens inside the database, in bulk:
claiming a file for processing is an insert-if-absent into `pe_manifest`, and storing a
result is an insert-if-absent into `pe_metadata` (a row whose download failed may be
replaced by a later attempt). Neither ever pulls the table into Python.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

logger = logging.getLogger(__name__)

metadata_obj = sa.MetaData()

# Statuses a later run retries rather than counting the file as done.
RETRYABLE_STATUSES = ("download_failed",)

pe_metadata = sa.Table(
    "pe_metadata",
    metadata_obj,
    sa.Column("path", sa.Text, primary_key=True),
    sa.Column("label", sa.Text, nullable=False),
    sa.Column("size", sa.BigInteger),
    sa.Column("sha256", sa.String(64)),
    sa.Column("file_type", sa.Text),
    sa.Column("architecture", sa.Text),
    sa.Column("machine", sa.Integer),
    sa.Column("import_count", sa.Integer),
    sa.Column("import_dll_count", sa.Integer),
    sa.Column("export_count", sa.Integer),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("run_id", sa.Text),
    sa.Column("pe_format", sa.Text),
    sa.Column("subsystem", sa.Integer),
    sa.Column("timestamp", sa.BigInteger),
    sa.Column("section_count", sa.Integer),
    sa.Column("entry_point", sa.BigInteger),
    sa.Column("has_signature", sa.Boolean),
    sa.Column("is_dotnet", sa.Boolean),
    sa.Column("overlay_size", sa.BigInteger),
    sa.Column("entropy", sa.Float),
    sa.Column("imphash", sa.String(32)),
    sa.Index("ix_pe_metadata_sha256", "sha256"),
)

pe_manifest = sa.Table(
    "pe_manifest",
    metadata_obj,
    sa.Column("path", sa.Text, primary_key=True),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("label", sa.Text, nullable=False),
    sa.Column("shard", sa.Text, nullable=False),
    sa.Column("size", sa.BigInteger),
    sa.Column("sampled_by", sa.Text, nullable=False),
    sa.Column("sampled_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_pe_manifest_shard", "shard"),
    sa.Index("ix_pe_manifest_sampled_by", "sampled_by"),
)

pe_scan_state = sa.Table(
    "pe_scan_state",
    metadata_obj,
    sa.Column("label_prefix", sa.Text, primary_key=True),
    sa.Column("watermark", sa.Text, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

METADATA_COLUMNS: tuple[str, ...] = tuple(c.name for c in pe_metadata.columns)

_MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def create_db_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = sa.engine.make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # Executors and the driver write concurrently: wait for the lock instead of failing.
        engine = sa.create_engine(url, connect_args={"timeout": 60})

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    parsed = sa.engine.make_url(url)
    if parsed.drivername == "postgresql":
        # SQLAlchemy 2.1 maps plain postgresql:// to psycopg 3; bulk writes use psycopg2's COPY.
        parsed = parsed.set(drivername="postgresql+psycopg2")
    return sa.create_engine(parsed, pool_pre_ping=True)


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (idempotent, safe to call per run)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS_DIR))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")


def _insert_module(conn: Connection):
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql
    from sqlalchemy.dialects import sqlite

    return sqlite


# SQLite allows 32,766 bound parameters per statement; stay well below.
_MAX_PARAMETERS = 30_000


def claim_files(conn: Connection, rows: Sequence[dict]) -> list[str]:
    """Claim files for processing; returns the paths this call claimed (others had them).

    One INSERT ... ON CONFLICT DO NOTHING RETURNING decides atomically, so two runs sampling
    at once never claim the same file. On PostgreSQL the rows reach it through COPY into a
    staging table; elsewhere as multi-row VALUES chunks.
    """
    if not rows:
        return []
    if conn.dialect.name == "postgresql":
        columns = [c.name for c in pe_manifest.columns]
        stage = _copy_to_stage(conn, "pe_manifest_stage", "pe_manifest", columns, rows)
        stmt = (
            _insert_module(conn).insert(pe_manifest)
            .from_select(columns, sa.select(*[stage.c[name] for name in columns]))
            .on_conflict_do_nothing()
            .returning(pe_manifest.c.path)
        )
        claimed = list(conn.execute(stmt).scalars())
        conn.exec_driver_sql("TRUNCATE pe_manifest_stage")
        return claimed
    stmt = (
        _insert_module(conn).insert(pe_manifest).on_conflict_do_nothing()
        .returning(pe_manifest.c.path)
    )
    chunk = max(1, _MAX_PARAMETERS // len(rows[0]))
    claimed: list[str] = []
    for start in range(0, len(rows), chunk):
        claimed.extend(conn.execute(stmt.values(list(rows[start:start + chunk]))).scalars())
    return claimed


def get_watermark(conn: Connection, label_prefix: str) -> str | None:
    query = sa.select(pe_scan_state.c.watermark).where(
        pe_scan_state.c.label_prefix == label_prefix
    )
    return conn.execute(query).scalar()


def advance_watermark(conn: Connection, label_prefix: str, key: str) -> None:
    """Record that every key up to `key` (in key order) has been claimed; never moves back."""
    stmt = _insert_module(conn).insert(pe_scan_state).values(
        label_prefix=label_prefix, watermark=key, updated_at=utcnow()
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[pe_scan_state.c.label_prefix],
        set_={"watermark": stmt.excluded.watermark, "updated_at": stmt.excluded.updated_at},
        where=pe_scan_state.c.watermark < stmt.excluded.watermark,
    )
    conn.execute(stmt)


def _pending_filter(shards: Sequence[str]):
    done = pe_metadata.alias("done")
    join = pe_manifest.outerjoin(done, done.c.path == pe_manifest.c.path)
    condition = sa.and_(
        pe_manifest.c.shard.in_(list(shards)),
        sa.or_(done.c.path.is_(None), done.c.status.in_(RETRYABLE_STATUSES)),
    )
    return join, condition


def pending_counts(conn: Connection, shards: Sequence[str]) -> dict[str, int]:
    """Files claimed but not yet stored (or whose download failed), per shard."""
    if not shards:
        return {}
    join, condition = _pending_filter(shards)
    query = (
        sa.select(pe_manifest.c.shard, sa.func.count())
        .select_from(join)
        .where(condition)
        .group_by(pe_manifest.c.shard)
    )
    return {shard: count for shard, count in conn.execute(query)}


def pending_files(
    conn: Connection, shards: Sequence[str]
) -> list[tuple[str, str, str, int | None]]:
    """(path, key, label, size) of the pending files of some shards, in path order."""
    join, condition = _pending_filter(shards)
    query = (
        sa.select(pe_manifest.c.path, pe_manifest.c.key, pe_manifest.c.label, pe_manifest.c.size)
        .select_from(join)
        .where(condition)
        .order_by(pe_manifest.c.path)
    )
    return [tuple(row) for row in conn.execute(query)]


def _upsert_statement(conn: Connection, source):
    """Insert rows; replace an existing row only when its status is retryable."""
    stmt = _insert_module(conn).insert(pe_metadata)
    stmt = stmt.from_select(list(METADATA_COLUMNS), source) if source is not None else stmt
    updates = {name: stmt.excluded[name] for name in METADATA_COLUMNS if name != "path"}
    return stmt.on_conflict_do_update(
        index_elements=[pe_metadata.c.path],
        set_=updates,
        # Inlined: executemany cannot expand an IN list of bound parameters.
        where=sa.text(
            "pe_metadata.status IN (" + ", ".join(f"'{s}'" for s in RETRYABLE_STATUSES) + ")"
        ),
    )


def _csv_value(value: Any) -> Any:
    if value is None:
        return r"\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def write_rows(conn: Connection, rows: Sequence[dict]) -> int:
    """Store result rows, insert-if-absent; returns how many rows were inserted or replaced.

    PostgreSQL: COPY into a temporary staging table, then one INSERT ... SELECT ... ON CONFLICT,
    so a batch costs two round trips whatever its size. SQLite: one executemany upsert.
    """
    if not rows:
        return 0
    if conn.dialect.name != "postgresql":
        return conn.execute(_upsert_statement(conn, None), list(rows)).rowcount
    stage = _copy_to_stage(conn, "pe_metadata_stage", "pe_metadata", METADATA_COLUMNS, rows)
    source = sa.select(*[stage.c[name] for name in METADATA_COLUMNS])
    result = conn.execute(_upsert_statement(conn, source))
    conn.exec_driver_sql("TRUNCATE pe_metadata_stage")
    return result.rowcount


def _copy_to_stage(
    conn: Connection, stage: str, like: str, columns: Sequence[str], rows: Sequence[dict]
) -> sa.TableClause:
    """COPY rows into a temporary table shaped like `like` (PostgreSQL); returns the stage.

    The stage lives as long as the connection and is emptied at commit, so a pooled
    connection reuses it; callers truncate it after use within their transaction too.
    """
    conn.exec_driver_sql(
        f"CREATE TEMPORARY TABLE IF NOT EXISTS {stage} "
        f"(LIKE {like} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    )
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for row in rows:
        writer.writerow([_csv_value(row.get(name)) for name in columns])
    buffer.seek(0)
    names = ", ".join(f'"{name}"' for name in columns)
    cursor = conn.connection.dbapi_connection.cursor()
    try:
        copy = f"COPY {stage} ({names}) FROM STDIN WITH (FORMAT csv, NULL '\\N')"
        cursor.copy_expert(copy, buffer)
    finally:
        cursor.close()
    return sa.table(stage, *[sa.column(name) for name in columns])


def count_rows(conn: Connection, where: Iterable = ()) -> int:
    query = sa.select(sa.func.count()).select_from(pe_metadata)
    for clause in where:
        query = query.where(clause)
    return conn.execute(query).scalar_one()
