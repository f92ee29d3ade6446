"""parse_pe against pefile (the reference), on real fixtures, hostile inputs and mutations.

Fixtures: pe_assets_tests/fixtures/pe/ (rebuild with fixtures/build_fixtures.sh, then refresh
expected.json with fixtures/make_expected.py), plus pip's vendored Windows launchers when the
installed pip ships them.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import struct
from pathlib import Path

import numpy as np
import pefile
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pe_assets.pe_parser as pe_parser
from pe_assets import pe_metadata_cli
from pe_assets.pe_parser import (
    MAX_EXPORT_COUNT,
    MAX_IMPORT_COUNT,
    MAX_IMPORT_DLL_COUNT,
    MAX_SECTIONS,
    PARSED_FIELDS,
    STATUSES,
    parse_pe,
    parse_structure,
)
from pe_assets_tests.pefile_reference import diff_records, reference_record

FIXTURES = Path(__file__).parent / "fixtures" / "pe"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())


def pip_launchers() -> list[Path]:
    """pip's vendored distlib launchers (i386, amd64, arm64), if this pip has them."""
    try:
        import pip._vendor.distlib as distlib
    except ImportError:
        return []
    return sorted(Path(distlib.__file__).parent.glob("*.exe"))


REAL_FILES = sorted(FIXTURES.glob("*.exe")) + sorted(FIXTURES.glob("*.dll")) + pip_launchers()
FIXTURE_BYTES = {p.name: p.read_bytes() for p in REAL_FILES}


def pe_offsets(data: bytes) -> dict[str, int]:
    """File offsets of the header fields the hostile cases overwrite."""
    pe = pefile.PE(data=data, fast_load=True)
    nt = pe.DOS_HEADER.e_lfanew
    optional = nt + 24
    directories = optional + (112 if pe.PE_TYPE == pefile.OPTIONAL_HEADER_MAGIC_PE_PLUS else 96)
    offsets = {
        "nt": nt,
        "optional": optional,
        "number_of_sections": nt + 6,
        "rva_count": directories - 4,
        "directories": directories,
        "sections": optional + pe.FILE_HEADER.SizeOfOptionalHeader,
    }
    for name in ("export", "import"):
        entry = pe.OPTIONAL_HEADER.DATA_DIRECTORY[0 if name == "export" else 1]
        offsets[f"{name}_directory"] = pe.get_offset_from_rva(entry.VirtualAddress)
        offsets[f"{name}_rva"] = entry.VirtualAddress
    return offsets


def patched(data: bytes, offset: int, fmt: str, *values: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, *values)
    return bytes(out)


def assert_well_formed(record: dict) -> None:
    assert tuple(record) == PARSED_FIELDS
    assert record["status"] in STATUSES
    assert (record["error"] is None) == (record["status"] == "ok")
    assert record["error"] is None or len(record["error"]) <= 200
    if record["import_count"] is not None:
        assert 0 <= record["import_count"] <= MAX_IMPORT_COUNT
        assert 0 <= record["import_dll_count"] <= MAX_IMPORT_DLL_COUNT
        assert 0 <= record["export_count"] <= MAX_EXPORT_COUNT
        assert 0 <= record["section_count"] <= MAX_SECTIONS
        assert 0 <= record["overlay_size"] <= record["size"]
        assert 0.0 <= record["entropy"] <= 8.0


# -- (1) and (2): real files agree with pefile and with expected.json ------------------------


@pytest.mark.parametrize("path", REAL_FILES, ids=lambda p: p.name)
def test_fields_equal_pefile_full_load(path: Path) -> None:
    data = FIXTURE_BYTES[path.name]
    ours = parse_pe(data)
    reference = reference_record(data)

    assert reference["status"] == "ok"
    assert ours["status"] == "ok", ours["error"]
    assert diff_records(ours, reference) == {}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fields_equal_expected_json(name: str) -> None:
    ours = parse_pe(FIXTURE_BYTES[name])
    expected = EXPECTED[name]

    assert diff_records(ours, expected) == {}
    assert ours["status"] == expected["status"]


def test_fixtures_cover_the_interesting_cases() -> None:
    # If a rebuild loses one of these, the comparisons above prove less than they seem to.
    assert {EXPECTED[n]["architecture"] for n in EXPECTED} == {"x86", "x64"}
    assert {EXPECTED[n]["file_type"] for n in EXPECTED} == {"exe", "dll"}
    assert EXPECTED["fixture_x86.dll"]["export_count"] == 5  # named, ordinal-only, forwarder
    assert EXPECTED["hello_overlay_x64.exe"]["overlay_size"] == 4096
    for arch in ("x86", "x64"):
        pe = pefile.PE(data=FIXTURE_BYTES[f"hello_{arch}.exe"])
        imports = [i for d in pe.DIRECTORY_ENTRY_IMPORT for i in d.imports]
        by_ordinal = [i for i in imports if i.import_by_ordinal]
        assert len(by_ordinal) == 2  # ws2_32 (named by ordlookup) and fixture.dll (not)


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview", "mmap"])
def test_accepts_every_buffer_type(kind: str, tmp_path: Path) -> None:
    data = FIXTURE_BYTES["fixture_x64.dll"]
    expected = parse_pe(data)
    if kind == "mmap":
        path = tmp_path / "f.dll"
        path.write_bytes(data)
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            assert parse_pe(m) == expected
            # parse_pe released its views: the map can be closed (no "exported pointers").
        return
    buffer = {"bytes": bytes, "bytearray": bytearray, "memoryview": memoryview}[kind](data)
    assert parse_pe(buffer) == expected


# -- (3) hand-made hostile inputs ------------------------------------------------------------

X86_EXE = FIXTURE_BYTES["hello_x86.exe"]
X64_DLL = FIXTURE_BYTES["fixture_x64.dll"]
X86_OFF = pe_offsets(X86_EXE)
X64_OFF = pe_offsets(X64_DLL)


def _dos_stub(e_lfanew: int) -> bytes:
    return patched(b"MZ" + bytes(62), 60, "<I", e_lfanew)


HOSTILE_CASES = {
    "empty": (b"", "not_pe"),
    "mz_only": (b"MZ", "not_pe"),
    "text": (b"This program cannot be run in DOS mode.\n" * 10, "not_pe"),
    "zm_header": (b"ZM" + bytes(200), "not_pe"),
    "e_lfanew_past_end": (_dos_stub(0xFFFFFFFF), "not_pe"),
    "e_lfanew_at_end": (_dos_stub(64), "not_pe"),
    "ne_signature": (_dos_stub(64) + b"NE" + bytes(100), "not_pe"),
    "zero_signature": (_dos_stub(64) + bytes(100), "not_pe"),
    "cut_in_coff_header": (X86_EXE[: X86_OFF["nt"] + 10], "malformed"),
    "cut_in_optional_header": (X86_EXE[: X86_OFF["optional"] + 40], "malformed"),
    "cut_in_section_table": (X86_EXE[: X86_OFF["sections"] + 60], "malformed"),
    "cut_after_section_table": (X86_EXE[: X86_OFF["sections"] + 40 * 9 + 8], "ok"),
    "cut_in_middle": (X86_EXE[: len(X86_EXE) // 2], "ok"),
    # pefile loads these two; we call a file that ends before its section table malformed.
    "sections_0xffff": (
        patched(X86_EXE, X86_OFF["number_of_sections"], "<H", 0xFFFF), "malformed"
    ),
    "cut_in_data_directories": (X86_EXE[: X86_OFF["directories"] + 20], "malformed"),
    "rva_count_0xffffffff": (patched(X86_EXE, X86_OFF["rva_count"], "<I", 0xFFFFFFFF), "ok"),
    "import_rva_past_end": (patched(X86_EXE, X86_OFF["directories"] + 8, "<I", 0x7FFFFFF0), "ok"),
    # Descriptor's thunk tables point back at the descriptors themselves.
    "import_loop": (
        patched(
            X86_EXE, X86_OFF["import_directory"], "<IIIII",
            X86_OFF["import_rva"], 0, 0, X86_OFF["import_rva"], X86_OFF["import_rva"],
        ),
        "ok",
    ),
    "import_thunks_past_end": (
        patched(X86_EXE, X86_OFF["import_directory"], "<IIIII", 0x7FFFFFF0, 0, 0, 0, 0x7FFFFFF0),
        "ok",
    ),
    "export_counts_0xffffffff": (
        patched(X64_DLL, X64_OFF["export_directory"] + 20, "<II", 0xFFFFFFFF, 0xFFFFFFFF),
        None,  # ok or partial: pefile walks until the section ends, we stop at our limit
    ),
    "export_arrays_past_end": (
        patched(X64_DLL, X64_OFF["export_directory"] + 28, "<III", *(3 * [0x7FFFFFF0])),
        "ok",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_CASES))
def test_hostile_input_gives_status(case: str) -> None:
    data, status = HOSTILE_CASES[case]
    record = parse_pe(data)

    assert_well_formed(record)
    if status is None:
        assert record["status"] in ("ok", "partial")
    else:
        assert record["status"] == status, record["error"]
    assert record["sha256"] == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("case", sorted(HOSTILE_CASES))
def test_hostile_input_agrees_with_pefile_where_it_loads(case: str) -> None:
    data, _ = HOSTILE_CASES[case]
    ours = parse_pe(data)
    reference = reference_record(data)

    if reference["status"] == "rejected":
        assert ours["status"] in ("not_pe", "malformed")
    elif ours["status"] == "ok" or ours_cut_before_section_table(ours):
        assert diff_records(ours, reference) == {}


def ours_cut_before_section_table(record: dict) -> bool:
    """Malformed by our rule only: pefile loads the file and every field is still filled."""
    return record["status"] == "malformed" and "before the section table" in record["error"]


def test_too_large_keeps_size_and_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pe_parser, "MAX_FILE_SIZE", 1000)
    record = parse_pe(X86_EXE)

    assert record["status"] == "too_large"
    assert record["size"] == len(X86_EXE)
    assert record["sha256"] == hashlib.sha256(X86_EXE).hexdigest()
    assert record["machine"] is None


def test_unexpected_exception_becomes_malformed(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(self: object) -> None:
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(pe_parser._PEReader, "read", explode)
    record = parse_pe(X86_EXE)

    assert record["status"] == "malformed"
    assert "ZeroDivisionError" in record["error"]


def test_export_table_beyond_our_limit_is_partial(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pe_parser, "MAX_EXPORT_SLOTS", 2)
    record = parse_pe(X64_DLL)

    assert record["status"] == "partial"
    assert "export" in record["error"]
    assert record["export_count"] < EXPECTED["fixture_x64.dll"]["export_count"]


# -- (4) mutations of real files -------------------------------------------------------------

MUTATED_SOURCES = sorted(FIXTURE_BYTES)
# Mutations aim at the first KiB (headers, section table) and at the import/export tables.
HEADER_REGION = 0x400


@st.composite
def mutated_files(draw: st.DrawFn) -> bytes:
    data = bytearray(FIXTURE_BYTES[draw(st.sampled_from(MUTATED_SOURCES))])
    offsets = pe_offsets(bytes(data))
    hot_spots = [0, offsets["nt"], offsets["directories"], offsets["sections"]]
    hot_spots += [offsets[k] for k in ("import_directory", "export_directory") if offsets[k]]
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "run", "truncate", "anywhere"]))
        base = draw(st.sampled_from(hot_spots))
        offset = min(base + draw(st.integers(0, 96)), len(data) - 1)
        if kind == "flip":
            data[offset] ^= 1 << draw(st.integers(0, 7))
        elif kind == "run":
            fill = draw(st.sampled_from([0x00, 0xFF]))
            length = draw(st.integers(1, 16))
            data[offset : offset + length] = bytes([fill]) * length
        elif kind == "truncate":
            del data[draw(st.integers(0, len(data))) :]
            if not data:
                break
        else:
            position = draw(st.integers(0, min(len(data), HEADER_REGION) - 1))
            data[position] = draw(st.integers(0, 255))
    return bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_files())
def test_mutated_files_give_well_formed_records(data: bytes) -> None:
    assert_well_formed(parse_pe(data))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_files())
def test_mutated_files_agree_with_pefile_where_it_loads(data: bytes) -> None:
    ours = parse_pe(data)
    reference = reference_record(data)

    if reference["status"] == "rejected":
        assert ours["status"] in ("not_pe", "malformed")
    else:
        assert ours["status"] in ("ok", "partial") or ours_cut_before_section_table(ours)
        assert diff_records(ours, reference) == {}


@pytest.mark.parametrize("path", REAL_FILES, ids=lambda p: p.name)
def test_parse_structure_is_parse_pe_without_the_digests(path: Path) -> None:
    data = FIXTURE_BYTES[path.name]
    full, structure = parse_pe(data), parse_structure(data)

    assert structure["sha256"] is None and structure["entropy"] is None
    assert structure == {**full, "sha256": None, "entropy": None}


def test_byte_histogram_is_built_in_c() -> None:
    # setup.py marks the extension optional so an install without a compiler still works;
    # the project's own install (make install) has one, and must not fall back silently.
    assert pe_parser.HAVE_C_BYTE_COUNTS


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=4096), st.integers(min_value=0, max_value=7))
def test_byte_histogram_in_c_equals_numpy(data: bytes, skip: int) -> None:
    view = memoryview(data)[skip:]  # odd lengths and unaligned starts
    counts = pe_parser.byte_histogram(view)

    assert counts.dtype == np.int64
    assert counts.tolist() == pe_parser.numpy_byte_histogram(view).tolist()
    assert counts.tolist() == [bytes(view).count(b) for b in range(256)]


def test_byte_histogram_of_large_real_files_in_c_equals_numpy() -> None:
    # Above _PAIR_HISTOGRAM_MIN_SIZE the numpy path counts byte pairs: compare that path too.
    data = b"".join(FIXTURE_BYTES[p.name] for p in REAL_FILES) * 4
    assert len(data) > pe_parser._PAIR_HISTOGRAM_MIN_SIZE

    for chunk in (data, data[:-1]):
        assert (pe_parser.byte_histogram(chunk) == pe_parser.numpy_byte_histogram(chunk)).all()


# -- (5) a 100 MB file with an overlay -------------------------------------------------------


def test_large_file_with_overlay(tmp_path: Path) -> None:
    overlay = 100 * 2**20
    path = tmp_path / "big.exe"
    with open(path, "wb") as f:
        f.write(X86_EXE)
        f.truncate(len(X86_EXE) + overlay)  # sparse: no 100 MB write

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        record = parse_pe(m)
        # fast_load skips pefile's pure-Python byte count; the overlay needs no directory.
        pe = pefile.PE(data=m, fast_load=True)
        reference_start = pe.get_overlay_data_start_offset()
        pe.close()

    assert_well_formed(record)
    assert record["status"] == "ok"
    assert record["overlay_size"] == len(X86_EXE) + overlay - reference_start
    assert record["overlay_size"] >= overlay
    assert record["import_count"] == EXPECTED["hello_x86.exe"]["import_count"]


# -- (6) the pe-metadata command ------------------------------------------------------------


def test_cli_prints_one_json_line_per_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    exe = FIXTURES / "hello_x64.exe"

    code = pe_metadata_cli.main([str(exe), str(empty)])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    assert code == 0
    assert [line["path"] for line in lines] == [str(exe), str(empty)]
    assert all(tuple(line) == ("path", *PARSED_FIELDS) for line in lines)
    assert {k: v for k, v in lines[0].items() if k != "path"} == parse_pe(exe.read_bytes())
    assert lines[1]["status"] == "not_pe"
    assert lines[1]["size"] == 0


def test_cli_reports_unreadable_file_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.exe"
    exe = FIXTURES / "fixture_x86.dll"

    code = pe_metadata_cli.main([str(missing), str(exe)])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    assert code == 1
    assert lines[0]["status"] == "unreadable"
    assert "FileNotFoundError" in lines[0]["error"]
    assert lines[1]["status"] == "ok"
