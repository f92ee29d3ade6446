"""The database contract on real PostgreSQL: claims are exclusive, rows are written once."""

import threading

import pytest

from pe_assets.table import (
    METADATA_COLUMNS,
    claim_files,
    create_db_engine,
    pending_counts,
    pending_files,
    utcnow,
    write_rows,
)


@pytest.fixture
def engine(database_url):
    engine = create_db_engine(database_url)
    yield engine
    engine.dispose()


def manifest_row(path: str, shard: str = "1/ab") -> dict:
    return {"path": path, "key": path, "label": "malicious", "shard": shard, "size": 10,
            "sampled_by": "test", "sampled_at": utcnow()}


def result_row(path: str, status: str, run_id: str = "r1") -> dict:
    row = dict.fromkeys(METADATA_COLUMNS)
    row.update(path=path, label="malicious", status=status, processed_at=utcnow(), run_id=run_id)
    return row


def test_concurrent_claims_never_overlap(engine):
    rows = [manifest_row(f"s3://b/1/ab{i:05d}") for i in range(3000)]
    barrier = threading.Barrier(3)
    claimed: list[list[str]] = [[], [], []]

    def claim(slot: int) -> None:
        barrier.wait()
        with engine.begin() as conn:
            claimed[slot] = claim_files(conn, rows)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sum(len(c) for c in claimed) == len(rows)
    assert set().union(*map(set, claimed)) == {r["path"] for r in rows}


def test_rows_are_written_once_and_failed_downloads_are_retried(engine):
    with engine.begin() as conn:
        claim_files(conn, [manifest_row("s3://b/1/ab1"), manifest_row("s3://b/1/ab2")])
        assert pending_counts(conn, ["1/ab"]) == {"1/ab": 2}

        assert write_rows(conn, [result_row("s3://b/1/ab1", "ok"),
                                 result_row("s3://b/1/ab2", "download_failed")]) == 2
        assert [f[0] for f in pending_files(conn, ["1/ab"])] == ["s3://b/1/ab2"]

        # A retried Spark task writes the same rows again: nothing changes.
        assert write_rows(conn, [result_row("s3://b/1/ab1", "not_pe", run_id="r2")]) == 0
        # A later run's successful download replaces the failed one.
        assert write_rows(conn, [result_row("s3://b/1/ab2", "ok", run_id="r2")]) == 1
        assert pending_counts(conn, ["1/ab"]) == {}
        query = "SELECT path, status || ':' || run_id FROM pe_metadata"
        stored = dict(conn.exec_driver_sql(query).all())
    assert stored == {"s3://b/1/ab1": "ok:r1", "s3://b/1/ab2": "ok:r2"}


def test_sqlite_follows_the_same_contract(tmp_path):
    from pe_assets.table import migrate

    engine = create_db_engine(f"sqlite:///{tmp_path / 'pe.sqlite'}")
    migrate(engine)
    with engine.begin() as conn:
        assert claim_files(conn, [manifest_row("a"), manifest_row("b")]) == ["a", "b"]
        assert claim_files(conn, [manifest_row("b"), manifest_row("c")]) == ["c"]
        assert write_rows(conn, [result_row("a", "download_failed"), result_row("b", "ok")]) == 2
        assert write_rows(conn, [result_row("a", "ok"), result_row("b", "malformed")]) == 1
        stored = dict(conn.exec_driver_sql("SELECT path, status FROM pe_metadata").all())
    engine.dispose()
    assert stored == {"a": "ok", "b": "ok"}
