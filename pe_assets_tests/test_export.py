"""The dataset export: Parquet by label mirrors the table; JSON Lines holds one object per hash.

Rows go into the real test database with `table.write_rows`, the export runs on the suite's
Spark session, and the files are read back the way a user would: the Parquet with Spark's
Hive-partition discovery, the JSON Lines line by line with the json module.
"""

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from dagster import materialize
from dagster_pyspark import PySparkResource

from pe_assets.cli import main
from pe_assets.config import load_settings
from pe_assets.export import (
    JSONL_DIR,
    PARQUET_DIR,
    export_dataset,
    pe_dataset_export,
)
from pe_assets.resources import PeConfig
from pe_assets.table import METADATA_COLUMNS, create_db_engine, write_rows

NOW = datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc)
HASH_A, HASH_B, HASH_C, HASH_D = (c * 64 for c in "abcd")


def row(path: str, label: str, sha256: str | None, status: str = "ok", **fields) -> dict:
    parsed = status == "ok"
    values = dict.fromkeys(METADATA_COLUMNS)
    values.update(
        path=path, label=label, sha256=sha256, status=status,
        size=1024 if sha256 else None,
        file_type="exe" if parsed else None,
        architecture="x64" if parsed else None,
        machine=0x8664 if parsed else None,
        import_count=12 if parsed else None,
        import_dll_count=3 if parsed else None,
        export_count=0 if parsed else None,
        has_signature=False if parsed else None,
        entropy=6.25 if parsed else None,
        error=None if parsed else f"{status} for {path}",
        processed_at=NOW + timedelta(seconds=len(path)),
        run_id="run-1",
    )
    values.update(fields)
    return values


# The cases the dedupe rule covers, under paths that sort across chunk boundaries.
ROWS = [
    row("s3://b/0/a1", "clean", HASH_A),             # same bytes as 1/a2: both labels
    row("s3://b/1/a2", "malicious", HASH_A),
    row("s3://b/0/b1", "clean", HASH_B, architecture="x86"),
    row("s3://b/0/b2", "clean", HASH_B, architecture="x86"),  # one hash, two clean paths
    row("s3://b/1/c1", "malicious", HASH_C, is_dotnet=True, imphash="f" * 32),
    row("s3://b/0/failed", "clean", None, status="download_failed"),
    row("s3://b/1/d1", "malicious", HASH_D, status="not_pe"),
]


def expected_samples(rows: list[dict]) -> dict[str, dict]:
    """The rule of pe_assets.export, written out plainly: one object per sha256."""
    by_hash: dict[str, list[dict]] = {}
    for r in rows:
        if r["sha256"] is not None:
            by_hash.setdefault(r["sha256"], []).append(r)
    samples = {}
    for sha256, copies in by_hash.items():
        chosen = min(
            copies, key=lambda r: (r["label"] != "malicious", r["status"] != "ok", r["path"])
        )
        labels = {r["label"] for r in copies}
        samples[sha256] = {
            **chosen, "path_count": len(copies), "label_conflict": len(labels) > 1,
        }
    return samples


@pytest.fixture
def filled_database(database_url: str, monkeypatch) -> str:
    engine = create_db_engine(database_url)
    with engine.begin() as conn:
        write_rows(conn, ROWS)
    engine.dispose()
    monkeypatch.setenv("PE_DATABASE_URL", database_url)
    monkeypatch.setenv("PE_SPARK_MASTER", "local[2]")
    return database_url


def read_jsonl(folder: Path) -> list[dict]:
    lines = []
    for part in sorted(folder.glob("part-*")):
        lines += [json.loads(line) for line in part.read_text().splitlines() if line]
    return lines


def comparable(value):
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc)
    return value


def assert_parquet_mirrors_table(spark, folder: Path, rows: list[dict]) -> None:
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == [
        "label=clean", "label=malicious",
    ]
    stored = {r["path"]: r.asDict() for r in spark.read.parquet(str(folder)).collect()}
    assert set(stored) == {r["path"] for r in rows}
    for expected in rows:
        got = stored[expected["path"]]
        assert set(got) == set(METADATA_COLUMNS)
        for name in METADATA_COLUMNS:
            assert comparable(got[name]) == comparable(expected[name]), (expected["path"], name)


def assert_jsonl_has_one_object_per_hash(folder: Path, rows: list[dict]) -> None:
    objects = read_jsonl(folder)
    expected = expected_samples(rows)
    hashes = [o["sha256"] for o in objects]
    assert hashes == sorted(expected), "one object per sha256, sorted by sha256"
    for obj in objects:
        assert list(obj)[:2] == ["sha256", "label"]
        assert set(obj) == set(METADATA_COLUMNS) | {"path_count", "label_conflict"}
        want = expected[obj["sha256"]]
        for name, value in want.items():
            got = obj[name]
            if isinstance(value, datetime):
                got = datetime.fromisoformat(got)
            assert got == value, (obj["sha256"], name)


def test_export_writes_parquet_by_label_and_jsonl_by_hash(filled_database, spark, tmp_path):
    # Two rows per chunk: the seven rows are read by four Spark tasks.
    summary = export_dataset(spark, load_settings(), tmp_path / "export", rows_per_chunk=2)

    assert_parquet_mirrors_table(spark, tmp_path / "export" / PARQUET_DIR, ROWS)
    assert_jsonl_has_one_object_per_hash(tmp_path / "export" / JSONL_DIR, ROWS)
    assert (summary.table_rows, summary.rows_without_sha256, summary.samples) == (7, 1, 4)
    assert summary.samples_by_label == {"clean": 1, "malicious": 3}
    assert (summary.duplicate_paths, summary.label_conflicts) == (2, 1)


def test_hash_under_both_labels_is_malicious_and_flagged(filled_database, spark, tmp_path):
    export_dataset(spark, load_settings(), tmp_path)

    (sample,) = [o for o in read_jsonl(tmp_path / JSONL_DIR) if o["sha256"] == HASH_A]
    assert sample["label"] == "malicious" and sample["label_conflict"] is True
    assert (sample["path"], sample["path_count"]) == ("s3://b/1/a2", 2)
    (clean_twice,) = [o for o in read_jsonl(tmp_path / JSONL_DIR) if o["sha256"] == HASH_B]
    assert (clean_twice["path"], clean_twice["label_conflict"]) == ("s3://b/0/b1", False)


def test_export_of_an_empty_table_writes_empty_views(database_url, spark, tmp_path, monkeypatch):
    monkeypatch.setenv("PE_DATABASE_URL", database_url)
    monkeypatch.setenv("PE_SPARK_MASTER", "local[2]")

    summary = export_dataset(spark, load_settings(), tmp_path)

    assert (summary.table_rows, summary.samples) == (0, 0)
    assert read_jsonl(tmp_path / JSONL_DIR) == []


def test_export_replaces_an_earlier_export(filled_database, spark, tmp_path):
    export_dataset(spark, load_settings(), tmp_path)
    engine = create_db_engine(filled_database)
    with engine.begin() as conn:
        write_rows(conn, [row("s3://b/0/e1", "clean", "e" * 64)])
    engine.dispose()

    export_dataset(spark, load_settings(), tmp_path)

    assert len(read_jsonl(tmp_path / JSONL_DIR)) == 5
    assert spark.read.parquet(str(tmp_path / PARQUET_DIR)).count() == 8


def test_cli_export_writes_to_out(filled_database, spark, tmp_path, capsys):
    assert main(["export", "--out", str(tmp_path / "cli")]) == 0

    assert "4 samples" in capsys.readouterr().out
    assert len(read_jsonl(tmp_path / "cli" / JSONL_DIR)) == 4
    assert spark.range(1).count() == 1, "the suite's Spark session must survive the CLI"


def test_asset_reports_counts_and_uses_pe_export_dir(filled_database, spark, tmp_path,
                                                     monkeypatch):
    monkeypatch.setenv("PE_EXPORT_DIR", str(tmp_path / "asset"))

    result = materialize(
        [pe_dataset_export],
        resources={"pe_config": PeConfig(), "pyspark": PySparkResource(spark_config={})},
    )

    metadata = result.asset_materializations_for_node("pe_dataset_export")[0].metadata
    assert metadata["samples"].value == 4
    assert metadata["rows_without_sha256"].value == 1
    assert metadata["label_conflicts"].value == 1
    assert metadata["jsonl_path"].value == str(tmp_path / "asset" / JSONL_DIR)
    assert len(read_jsonl(tmp_path / "asset" / JSONL_DIR)) == 4
