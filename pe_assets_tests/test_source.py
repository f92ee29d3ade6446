"""Listing and reading samples from S3 (moto over HTTP) and from a local folder."""

from concurrent.futures import ThreadPoolExecutor

import pytest

from pe_assets.config import load_settings
from pe_assets.errors import SourceError
from pe_assets.source import LocalSource, MissingObject, S3Source, is_sample_key, key_ranges


def s3_source(bucket, root: str = "") -> S3Source:
    url = f"{bucket.url}/{root}" if root else bucket.url
    return S3Source(load_settings({"PE_SOURCE_URL": url, "PE_S3_ENDPOINT_URL": bucket.endpoint}))


def test_s3_listing_pages_past_1000_keys_in_key_order(bucket):
    root = "data/set"
    prefix = f"{root}/"
    # 1,100 keys in one listing range: that range alone needs two pages.
    names = [f"ab{i:05d}" for i in range(1100)] + ["Zed", "_under", "~tilde", "f0", "ff"]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda name: bucket.put(f"{prefix}1/{name}", b"x"), names))
    bucket.put(f"{prefix}0/other", b"x")
    source = s3_source(bucket, root)

    listed = [item.key for item in source.list_folder("1/")]
    after = [item.key for item in source.list_folder("1/", after="1/ab01000")]

    assert listed == sorted(f"1/{name}" for name in names)
    assert after == [key for key in listed if key > "1/ab01000"]
    assert source.url_for("1/ff") == f"{bucket.url}/{prefix}1/ff"


def test_s3_read_and_missing_key(bucket):
    bucket.put("0/abc", b"MZ-bytes")
    source = s3_source(bucket)

    with source.open_bytes("0/abc") as data:
        assert bytes(data) == b"MZ-bytes"
    with pytest.raises(MissingObject):
        with source.open_bytes("0/nope"):
            pass


def test_s3_missing_bucket_is_a_source_error(bucket):
    settings = load_settings(
        {"PE_SOURCE_URL": "s3://no-such-bucket-here", "PE_S3_ENDPOINT_URL": bucket.endpoint}
    )
    with pytest.raises(SourceError, match="no-such-bucket-here"):
        list(S3Source(settings).list_folder("0/"))


def test_local_listing_and_memory_mapped_reads(tmp_path):
    (tmp_path / "1" / "sub").mkdir(parents=True)
    (tmp_path / "1" / "b2").write_bytes(b"MZ")
    (tmp_path / "1" / "a1").write_bytes(b"")
    (tmp_path / "1" / "sub" / "c3").write_bytes(b"123")
    source = LocalSource(load_settings({"PE_SOURCE_URL": str(tmp_path)}))

    listed = [(item.key, item.size) for item in source.list_folder("1/")]

    assert listed == [("1/a1", 0), ("1/b2", 2), ("1/sub/c3", 3)]
    assert [i.key for i in source.list_folder("1/", after="1/a1")] == ["1/b2", "1/sub/c3"]
    with source.open_bytes("1/b2") as data:
        assert data[:2] == b"MZ"
    with source.open_bytes("1/a1") as data:
        assert len(data) == 0
    assert source.url_for("1/b2") == (tmp_path / "1" / "b2").as_uri()


def test_key_ranges_cover_every_key_exactly_once():
    ranges = key_ranges("1/")
    keys = ["1/", "1/0", "1/00", "1/0g", "1/9z", "1/A", "1/ff", "1/fg", "1/\x7f", "1/g"]
    for key in keys:
        hits = [r for r in ranges if (r[0] is None or key > r[0]) and (r[1] is None or key <= r[1])]
        assert len(hits) == 1, key


@pytest.mark.parametrize(
    ("key", "expected"),
    [("1/3fa0", True), ("1/00Tree.html", False), ("1/index.HTM", False), ("1/.hidden", False),
     ("1/", False), ("1/tiny.txt", True)],
)
def test_what_counts_as_a_sample(key, expected):
    assert is_sample_key(key) is expected
