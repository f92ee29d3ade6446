"""The sample generator's promise: every valid sample is a PE image that pefile reads exactly as
its SampleSpec says, and every corrupt one is rejected or flagged the way its spec says."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

import pefile
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pe_assets.samples import (
    INDEX_FILE_NAME,
    MACHINES,
    SampleSpec,
    build_pe,
    generate_samples,
    iter_bucket_objects,
    spec_of_pe,
    write_sample_folder,
)

# Enough samples to cover every template kind and all corrupt kinds, few enough for pefile's
# full load (pure Python) to stay within seconds.
SAMPLE_COUNT = 300


def pefile_view(data: bytes) -> dict[str, Any]:
    """What pefile's full load reports, in SampleSpec's terms."""
    pe = pefile.PE(data=data)
    characteristics = pe.FILE_HEADER.Characteristics
    imports = getattr(pe, "DIRECTORY_ENTRY_IMPORT", [])
    exports = getattr(pe, "DIRECTORY_ENTRY_EXPORT", None)
    overlay_start = pe.get_overlay_data_start_offset()
    return {
        "machine": pe.FILE_HEADER.Machine,
        "file_type": "dll" if characteristics & 0x2000 else
                     ("exe" if characteristics & 0x0002 else None),
        "import_count": sum(len(entry.imports) for entry in imports),
        "import_dll_count": len(imports),
        "export_count": len(exports.symbols) if exports else 0,
        "subsystem": pe.OPTIONAL_HEADER.Subsystem,
        "timestamp": pe.FILE_HEADER.TimeDateStamp,
        "section_count": len(pe.sections),
        "entry_point": pe.OPTIONAL_HEADER.AddressOfEntryPoint,
        "overlay_size": len(data) - overlay_start if overlay_start is not None else 0,
        "size": len(data),
        "warnings": pe.get_warnings(),
    }


def expected_view(spec: SampleSpec) -> dict[str, Any]:
    fields = ("machine", "file_type", "import_count", "import_dll_count", "export_count",
              "subsystem", "timestamp", "section_count", "entry_point", "overlay_size", "size")
    return {name: getattr(spec, name) for name in fields} | {"warnings": []}


@pytest.mark.parametrize("dll", [False, True], ids=["exe", "dll"])
@pytest.mark.parametrize("machine", sorted(MACHINES))
def test_build_pe_round_trips_for_every_machine_and_file_type(machine: str, dll: bool) -> None:
    kwargs: dict[str, Any] = dict(
        machine=machine, dll=dll,
        imports={"KERNEL32.dll": ["CreateFileW", "CloseHandle"], "WS2_32.dll": [3, 23, 115]},
        exports=["Zeta", "Alpha", "Mid"] if dll else (), ordinal_only_exports=2 if dll else 0,
        overlay=b"appended" * 10, nonce=b"n" * 16,
    )
    data = build_pe(**kwargs)
    pe = pefile.PE(data=data)

    assert pefile_view(data) == expected_view(spec_of_pe(**kwargs))
    machine_id, pe32plus = MACHINES[machine]
    assert pe.FILE_HEADER.Machine == machine_id
    assert pe.OPTIONAL_HEADER.Magic == (0x20B if pe32plus else 0x10B)
    assert pe.is_dll() == dll and pe.is_exe() == (not dll)
    assert pe.OPTIONAL_HEADER.FileAlignment == 0x200
    assert pe.OPTIONAL_HEADER.SectionAlignment == 0x1000
    last = pe.sections[-1]
    assert pe.OPTIONAL_HEADER.SizeOfImage == -(-(last.VirtualAddress + last.Misc_VirtualSize)
                                               // 0x1000) * 0x1000
    assert pe.get_overlay() == b"appended" * 10

    # pefile names ws2_32 ordinals from its own table (3 -> closesocket), so compare the
    # ordinals of by-ordinal imports and the names of the others.
    imported = {entry.dll: [i.ordinal if i.import_by_ordinal else i.name for i in entry.imports]
                for entry in pe.DIRECTORY_ENTRY_IMPORT}
    assert imported == {b"KERNEL32.dll": [b"CreateFileW", b"CloseHandle"],
                        b"WS2_32.dll": [3, 23, 115]}
    if dll:
        names = [symbol.name for symbol in pe.DIRECTORY_ENTRY_EXPORT.symbols]
        assert names == [b"Alpha", b"Mid", b"Zeta", None, None]  # sorted, then ordinal-only


@settings(max_examples=40, deadline=None)
@given(
    machine=st.sampled_from(sorted(MACHINES)),
    dll=st.booleans(),
    imports=st.dictionaries(
        st.from_regex(r"[A-Z][A-Z0-9]{0,7}\.dll", fullmatch=True),
        st.lists(st.one_of(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,30}", fullmatch=True),
                           st.integers(1, 0xFFFF)), min_size=1, max_size=20),
        max_size=6,
    ),
    exports=st.sets(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,30}", fullmatch=True), max_size=30),
    ordinal_only_exports=st.integers(0, 5),
    overlay=st.binary(max_size=64),
)
def test_any_valid_request_round_trips(machine: str, dll: bool, imports: dict[str, list[Any]],
                                       exports: set[str], ordinal_only_exports: int,
                                       overlay: bytes) -> None:
    kwargs: dict[str, Any] = dict(machine=machine, dll=dll, imports=imports,
                                  exports=sorted(exports),
                                  ordinal_only_exports=ordinal_only_exports, overlay=overlay)
    view = pefile_view(build_pe(**kwargs))
    expected = expected_view(spec_of_pe(**kwargs))

    # Tiny images of repeated bytes may trip pefile's byte-frequency warning; only counts matter.
    view.pop("warnings"), expected.pop("warnings")
    assert view == expected


@pytest.mark.parametrize("kwargs", [
    {"machine": "mips"},
    {"imports": {"KERNEL32.dll": []}},
    {"imports": {"KERNEL32.dll": [0]}},
    {"exports": ["Same", "Same"]},
    {"exports": ["Caf\u00e9"]},
])
def test_build_pe_refuses_impossible_requests(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        build_pe(**kwargs)


def test_valid_samples_match_their_specs_without_warnings() -> None:
    checked = Counter()
    for _, data, spec in generate_samples(SAMPLE_COUNT, seed=7, corrupt_share=0.0):
        assert spec.status == "ok" and spec.kind == "pe"
        assert pefile_view(data) == expected_view(spec)
        checked[(spec.architecture, spec.file_type)] += 1

    # The pool must really be varied: every architecture and both file types appear.
    assert {arch for arch, _ in checked} == set(MACHINES)
    assert {file_type for _, file_type in checked} == {"exe", "dll"}


def test_samples_vary_in_size_imports_exports_and_overlays() -> None:
    specs = [spec for _, _, spec in generate_samples(SAMPLE_COUNT, seed=1, corrupt_share=0.0)]

    assert min(spec.size for spec in specs) < 3 * 1024
    assert max(spec.size for spec in specs) > 20 * 1024
    assert len({spec.import_count for spec in specs}) > 10
    assert len({spec.export_count for spec in specs}) > 5
    assert any(spec.overlay_size for spec in specs)


def test_corrupt_samples_are_rejected_or_flagged_as_their_spec_says() -> None:
    kinds = Counter()
    for _, data, spec in generate_samples(SAMPLE_COUNT, seed=3, corrupt_share=1.0):
        kinds[spec.kind] += 1
        assert spec.size == len(data)
        if spec.kind == "random":
            assert spec.status == "not_pe" and data[:2] != b"MZ"
        if spec.kind == "mz_only":
            assert spec.status == "not_pe" and data[:2] == b"MZ"
        if spec.status == "not_pe":
            with pytest.raises(pefile.PEFormatError):
                pefile.PE(data=data)
            continue

        assert spec.kind == "truncated" and spec.status == "malformed"
        try:
            pe = pefile.PE(data=data)
        except pefile.PEFormatError:
            continue
        # Cut after a whole structure, pefile pads and parses on, but it says something is off,
        # and the file ends before the headers it declares.
        assert pe.get_warnings()
        assert len(data) < pe.OPTIONAL_HEADER.SizeOfHeaders

    assert set(kinds) == {"random", "mz_only", "truncated"}


def test_default_share_of_corrupt_samples_is_small() -> None:
    statuses = Counter(spec.status for _, _, spec in generate_samples(2000, seed=0))

    assert 0.02 < (statuses["not_pe"] + statuses["malformed"]) / 2000 < 0.09


def test_names_are_unique_sha256_digests() -> None:
    samples = list(generate_samples(5000, seed=11, corrupt_share=0.2))

    assert all(name == hashlib.sha256(data).hexdigest() for name, data, _ in samples)
    assert len({name for name, _, _ in samples}) == len(samples)


def test_samples_are_deterministic_per_seed() -> None:
    first = list(generate_samples(200, seed=5))

    assert list(generate_samples(200, seed=5)) == first
    other_names = {name for name, _, _ in generate_samples(200, seed=6)}
    assert not other_names & {name for name, _, _ in first}


def test_write_sample_folder_writes_the_bucket_layout(tmp_path: Path) -> None:
    summary = write_sample_folder(tmp_path, n_clean=30, n_malicious=20, seed=2)

    clean = sorted(p.name for p in (tmp_path / "0").iterdir())
    malicious = sorted(p.name for p in (tmp_path / "1").iterdir())
    assert len(clean) == 31 and len(malicious) == 21
    assert INDEX_FILE_NAME in clean and INDEX_FILE_NAME in malicious
    assert (summary.clean, summary.malicious, summary.index_files) == (30, 20, 2)
    assert summary.files_written == 52

    expected = {key: (data, spec) for key, data, spec in
                iter_bucket_objects(n_clean=30, n_malicious=20, seed=2)}
    assert summary.specs == {key: spec for key, (_, spec) in expected.items()}
    assert summary.corrupt == sum(spec.status != "ok" for _, spec in expected.values())
    for key, (data, _) in expected.items():
        assert (tmp_path / key).read_bytes() == data
    on_disk = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())
    assert summary.bytes_written == on_disk


def test_write_sample_folder_honours_prefixes_and_skips_index_files(tmp_path: Path) -> None:
    write_sample_folder(tmp_path, n_clean=3, n_malicious=4, clean_prefix="benign/",
                        malicious_prefix="malware/", with_index_files=False)

    assert len(list((tmp_path / "benign").iterdir())) == 3
    assert len(list((tmp_path / "malware").iterdir())) == 4
    assert not list(tmp_path.rglob(INDEX_FILE_NAME))
