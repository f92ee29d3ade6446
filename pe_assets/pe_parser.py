"""Bytes in, one metadata record out. Pure: no Spark, no S3, no database.

Why our own reader instead of pefile: a full `pefile.PE(data=...)` load parses every data
directory (resources, relocations, debug, TLS, ...) and counts every byte of the file in pure
Python, which costs about 0.1 s per typical file and seconds on a 100 MB one. We need a dozen
fields, so this module reads only the DOS header, COFF and optional headers, the data directory
table, the section table, the import descriptors with their thunks and hint/name entries, and
the export directory. Hashing and the byte histogram run in C (hashlib, and our own
_bytecount extension with numpy as its fallback): they are the only work that grows with the
file's size, and they bound the parser's speed on real files (docs/performance.md).

pefile 2024.8.26 with a full load stays the reference: the import and export walks below follow
its rules step by step (address mapping, header window, stop conditions and limits) so that the
counts and the imphash agree with it, including on many damaged files.

Statuses:
- "ok": the headers parsed; every field is filled.
- "not_pe": no PE image: empty, shorter than a DOS header, no "MZ", e_lfanew outside the
  file, or no "PE\\0\\0" signature there (NE/LE/LX/TE signatures included). pefile raises
  PEFormatError on all of these.
- "malformed": a PE signature is present but the COFF header, the optional header or a section
  header is cut short, so pefile raises PEFormatError and no table can be located. The fields
  we could read before the break (machine, architecture, file_type, timestamp) are kept. An
  unexpected exception inside the reader also lands here, with its class name as the reason.
  Also "malformed", though pefile loads them: files that end before the section table their
  COFF header declares (cut inside the data directories, or a section count far beyond the
  file). All fields are still filled as pefile reports them; only the status differs.
- "partial": the headers parsed, but an export table was larger than MAX_EXPORT_SLOTS, a limit
  pefile does not have; export_count is then a lower bound of what pefile would report.
- "too_large": larger than MAX_FILE_SIZE; only size and sha256 are filled.

For every status except "too_large" the entropy is filled too, as it needs no PE structure.
"""

from __future__ import annotations

import hashlib
import mmap
import struct
from hashlib import md5
from typing import Any

import numpy as np
import ordlookup  # ships with pefile; the same ordinal-name table get_imphash() uses

try:
    from pe_assets._bytecount import byte_counts as _c_byte_counts
except ImportError:  # built without a C compiler, or shipped to Spark workers in a zip
    _c_byte_counts = None

# Whether the byte histogram runs in C (pe_assets/_bytecount.c) or in numpy; same counts.
HAVE_C_BYTE_COUNTS = _c_byte_counts is not None

PARSED_FIELDS: tuple[str, ...] = (
    "size", "sha256", "status", "error", "file_type", "architecture", "machine",
    "import_count", "import_dll_count", "export_count", "pe_format", "subsystem",
    "timestamp", "section_count", "entry_point", "has_signature", "is_dotnet",
    "overlay_size", "entropy", "imphash",
)

STATUSES: tuple[str, ...] = ("ok", "not_pe", "malformed", "partial", "too_large")

Buffer = bytes | bytearray | memoryview | mmap.mmap

# Larger files are reported as too_large without being parsed: the Spark tasks hold one file in
# memory at a time and real PE images above a few hundred MB are vanishingly rare.
MAX_FILE_SIZE = 256 * 1024 * 1024

# pefile's own limits, kept at its values so the counts agree with it.
# Section headers read; a PE loader accepts at most 96 on old Windows, pefile stops at 0x800.
MAX_SECTIONS = 0x800
# Thunk entries read per file, summed over all import lookup *and* address tables (pefile's
# MAX_IMPORT_SYMBOLS is a per-file counter, not per DLL). This bounds the import walk.
MAX_IMPORT_THUNKS = 0x2000
# A thunk table whose hint/name addresses repeat this often, or spread further apart than a
# module can be, is taken as garbage and dropped.
MAX_REPEATED_THUNK_ADDRESSES = 15
MAX_THUNK_ADDRESS_SPREAD = 128 * 2**20
# Import descriptors that yield no symbols before the walk is abandoned.
MAX_IMPORT_DESCRIPTOR_ERRORS = 5
# Thunk entries unpacked at once at the start of a table (runs then double); most tables
# end within this many entries.
_THUNK_RUN = 32
# Leading invalid names in one thunk table before it is taken as garbage.
MAX_LEADING_INVALID_IMPORT_NAMES = 1000
# Longest DLL, import and export names read (longer ones are cut, as pefile does).
MAX_NAME_LENGTH = 0x200
# Distinct exported symbols accepted per pass over the export tables.
MAX_EXPORT_SYMBOLS = 0x2000
# Repeats of one (name, address) pair, and of one address among ordinal-only exports, that
# mark an export table as corrupt.
MAX_REPEATED_NAMED_EXPORTS = 10
MAX_REPEATED_ORDINAL_EXPORTS = 120
# Unreadable export entries before the export table is dropped.
MAX_FAILED_EXPORT_ENTRIES = 10
# Data directories read: the format defines 16; pefile stops there whatever the header says.
MAX_DATA_DIRECTORIES = 16

# Our own limit, where pefile has none: export table slots scanned per pass. Export ordinals
# are 16-bit, so a loader cannot reach more slots than this; pefile walks up to the end of the
# file, which on a hostile 256 MB file means tens of millions of Python iterations.
MAX_EXPORT_SLOTS = 0x10000

# Upper bounds of the counts, derived from the limits above (the tests check them).
MAX_IMPORT_COUNT = MAX_IMPORT_THUNKS + 1
MAX_IMPORT_DLL_COUNT = MAX_IMPORT_THUNKS + 1
MAX_EXPORT_COUNT = 2 * MAX_EXPORT_SLOTS

# Inputs from this size on are counted by byte pairs (see byte_histogram): measured break-even.
_PAIR_HISTOGRAM_MIN_SIZE = 256 * 1024
# Byte pairs counted per np.bincount call: its int64 copy of a chunk stays at 4 MiB.
_HISTOGRAM_CHUNK = 1 << 19

# Reasons are stored in a table column; keep them short.
MAX_ERROR_LENGTH = 200

_ARCHITECTURES = {
    0x14C: "x86", 0x8664: "x64", 0x1C0: "arm", 0x1C2: "arm", 0x1C4: "arm", 0xAA64: "arm64",
    0x200: "ia64",
}
_PE_FORMATS = {0x10B: "PE32", 0x20B: "PE32+"}
_FILE_DLL = 0x2000
_FILE_EXECUTABLE_IMAGE = 0x0002
_DIR_EXPORT, _DIR_IMPORT, _DIR_SECURITY, _DIR_COM_DESCRIPTOR = 0, 1, 4, 14
_ORDINAL_FLAG32 = 0x80000000
_ORDINAL_FLAG64 = 0x8000000000000000
_NON_PE_SIGNATURES = {0x454E: "NE", 0x454C: "LE", 0x584C: "LX", 0x5A56: "TE"}

# pefile reads the optional header from a window this large and, when the window is shorter
# than the structure, zero-pads it if at least the bytes up to Subsystem are present.
_OPTIONAL_HEADER_WINDOW = 0x200
_MIN_OPTIONAL_HEADER_32 = 69
_MIN_OPTIONAL_HEADER_64 = 73

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_COFF = struct.Struct("<HHIIIHH")
_OPT32 = struct.Struct("<HBBIIIIIIIIIHHHHHHIIIIHHIIIIII")
_OPT64 = struct.Struct("<HBBIIIIIQIIHHHHHHIIIIHHQQQQII")
_SECTION = struct.Struct("<8sIIIIIIHHI")
_IMPORT_DESCRIPTOR = struct.Struct("<IIIII")
_EXPORT_DIRECTORY = struct.Struct("<IIHHIIIIIII")
_DATA_DIRECTORY = struct.Struct("<II")
_EMPTY_DESCRIPTOR = bytes(_IMPORT_DESCRIPTOR.size)

# Characters pefile accepts in DLL names and in import/export names; anything else marks the
# name invalid. bytes.translate(None, allowed) leaves only the characters outside the set.
_ALNUM = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_DOS_FILENAME_CHARS = _ALNUM + b"!#$%&'()-@^_`{}~+,.;=[]:\\/"
_IMPORT_NAME_CHARS = _ALNUM + b"._?@$()<>"
_EXPORT_NAME_CHARS = _ALNUM + b"!\"#$%&'()*+,-./:<>?[\\]^_`{|}~@"
_IMPHASH_STRIPPED_EXTENSIONS = ("ocx", "sys", "dll")


class _NotPE(Exception):
    """No PE image in the data (pefile raises PEFormatError)."""


class _Malformed(Exception):
    """A PE signature, but headers too broken to go on (pefile raises PEFormatError)."""


class _ExportsLost(Exception):
    """pefile's export parse raises and the whole export directory is dropped."""


def empty_record(size: int, sha256: str | None, status: str, error: str | None) -> dict[str, Any]:
    """A record with only the identity and status fields set."""
    record: dict[str, Any] = dict.fromkeys(PARSED_FIELDS)
    record.update(size=size, sha256=sha256, status=status, error=error)
    return record


def parse_pe(data: Buffer) -> dict[str, Any]:
    """Parse one file's bytes into a record with exactly PARSED_FIELDS. Never raises.

    `data` may be bytes, bytearray, memoryview or mmap.mmap; it is read through a memoryview,
    so a memory-mapped file is never copied whole.
    """
    return _parse(data, digests=True)


def parse_structure(data: Buffer) -> dict[str, Any]:
    """Like parse_pe, without the two whole-file digests: sha256 and entropy stay None.

    These are the fields pefile itself reports (headers, imports, exports, overlay); the
    parsing benchmark times this against pefile's full load, and parse_pe adds the digests.
    """
    return _parse(data, digests=False)


def _parse(data: Buffer, digests: bool) -> dict[str, Any]:
    # Strings are searched for in the object itself where it has find() (bytes, bytearray,
    # mmap), which spares a copy per name.
    searchable = data if isinstance(data, (bytes, bytearray, mmap.mmap)) else None
    with memoryview(data) as view:
        with view.cast("B") as mv:
            return _parse_view(mv, searchable, digests)


def _parse_view(mv: memoryview, searchable: Buffer | None, digests: bool) -> dict[str, Any]:
    size = len(mv)
    digest = hashlib.sha256(mv).hexdigest() if digests else None
    if size > MAX_FILE_SIZE:
        return empty_record(size, digest, "too_large", f"{size} bytes > {MAX_FILE_SIZE}")

    record = empty_record(size, digest, "ok", None)
    try:
        if digests:
            record["entropy"] = byte_entropy(mv)
        _PEReader(mv, record, searchable).read()
    except _NotPE as e:
        record.update(status="not_pe", error=_short(str(e)))
    except _Malformed as e:
        record.update(status="malformed", error=_short(str(e)))
    except Exception as e:  # noqa: BLE001 - a parse problem must never kill a Spark task
        record.update(status="malformed", error=_short(f"internal error: {type(e).__name__}"))
    return record


def byte_entropy(data: Buffer) -> float:
    """Shannon entropy of the bytes, in bits per byte; 0.0 for no data."""
    counts = byte_histogram(data)
    total = int(counts.sum())
    if total == 0:
        return 0.0
    p = counts[counts > 0] / total
    return max(0.0, float(-(p * np.log2(p)).sum()))  # max: no -0.0 for one-value files


def byte_histogram(data: Buffer) -> np.ndarray:
    """How often each byte value occurs, as 256 int64 counts (in C when it is built)."""
    with memoryview(data) as view, view.cast("B") as mv:
        if _c_byte_counts is not None:
            return np.frombuffer(_c_byte_counts(mv), dtype=np.uint64).astype(np.int64)
        return numpy_byte_histogram(mv)


def numpy_byte_histogram(data: Buffer) -> np.ndarray:
    """byte_histogram without the C extension.

    np.bincount over single bytes stalls on runs of one value (PE files are full of zeros), so
    for larger inputs we count byte pairs into 65536 bins and fold them; chunks keep the int64
    copy that bincount makes small. About 2.5x faster than a plain byte bincount on large PE
    files, but its 65536-bin tables cost more than they save on small ones.
    """
    with memoryview(data) as view, view.cast("B") as mv:
        if len(mv) < _PAIR_HISTOGRAM_MIN_SIZE:
            return np.bincount(np.frombuffer(mv, dtype=np.uint8), minlength=256)
        pairs = np.frombuffer(mv, dtype=np.uint16, count=len(mv) // 2)
        counts = np.zeros(65536, dtype=np.int64)
        for start in range(0, len(pairs), _HISTOGRAM_CHUNK):
            counts += np.bincount(pairs[start : start + _HISTOGRAM_CHUNK], minlength=65536)
        del pairs  # release the buffer export before the memoryview closes
        grid = counts.reshape(256, 256)  # [high byte, low byte]
        histogram = grid.sum(axis=0) + grid.sum(axis=1)
        if len(mv) % 2:
            histogram[mv[-1]] += 1
    return histogram


def _short(reason: str) -> str:
    return reason if len(reason) <= MAX_ERROR_LENGTH else reason[: MAX_ERROR_LENGTH - 3] + "..."


def _adjust_section_alignment(va: int, section_alignment: int, file_alignment: int) -> int:
    # pefile rounds section addresses down to SectionAlignment, or to FileAlignment when the
    # section alignment is below a page. Same float division as pefile, to round alike.
    if section_alignment < 0x1000:
        section_alignment = file_alignment
    if section_alignment and va % section_alignment:
        return section_alignment * int(va / section_alignment)
    return va


class _Section:
    """A section header plus pefile's adjusted addresses and its effective RVA range."""

    __slots__ = ("va", "va_adj", "ptr", "ptr_adj", "raw_size", "virtual_size", "lo", "hi")

    def __init__(self, va: int, virtual_size: int, raw_size: int, ptr: int) -> None:
        self.va = va
        self.virtual_size = virtual_size
        self.raw_size = raw_size
        self.ptr = ptr
        self.va_adj = self.ptr_adj = self.lo = self.hi = 0


class _PEReader:
    """Reads the few structures we need, mirroring pefile's address mapping and limits."""

    def __init__(
        self,
        mv: memoryview,
        record: dict[str, Any],
        searchable: bytes | bytearray | mmap.mmap | None = None,
    ) -> None:
        self.mv = mv
        self.searchable = searchable
        self.size = len(mv)
        self.record = record
        self.sections: list[_Section] = []
        self.last_section: _Section | None = None  # pefile's get_section_by_rva cache
        self.header = mv[:0]
        self.directories: list[tuple[int, int]] = []
        self.pe32_plus = False
        self.thunks_read = 0

    # -- headers -------------------------------------------------------------------------

    def read(self) -> None:
        optional_offset = self._read_file_header()
        sections_offset = optional_offset + self.size_of_optional_header
        self._read_optional_header(optional_offset)
        table_end = self._read_sections(sections_offset)
        self._set_header_window(table_end)

        # pefile looks up the entry point section while loading; that primes its section
        # cache, which decides lookups when sections overlap, so do the same lookup.
        entry_point = self.record["entry_point"]
        if self._section_by_rva(entry_point) is not None:
            self._offset_from_rva(entry_point)

        self.record["has_signature"] = self._directory_present(_DIR_SECURITY)
        self.record["is_dotnet"] = self._directory_present(_DIR_COM_DESCRIPTOR)
        self._read_directories()
        self.record["overlay_size"] = self._overlay_size(optional_offset)

        # pefile loads a file that ends before its declared section table (it zero-pads the
        # data directories and keeps the headers it found), but no loader would map it.
        table_needed = sections_offset + 40 * self.number_of_sections
        if self.number_of_sections and table_needed > self.size:
            self.record.update(
                status="malformed",
                error=f"file ends at {self.size}, before the section table end {table_needed}",
            )

    def _read_file_header(self) -> int:
        mv, size = self.mv, self.size
        if size == 0:
            raise _NotPE("empty file")
        if size < 64:
            raise _NotPE(f"{size} bytes, shorter than a DOS header")
        magic = bytes(mv[:2])
        if magic == b"ZM":
            raise _NotPE("ZM DOS executable, no PE image")
        if magic != b"MZ":
            raise _NotPE("no MZ header")
        nt_offset = _U32.unpack_from(mv, 60)[0]
        if nt_offset > size:
            raise _NotPE(f"e_lfanew 0x{nt_offset:x} beyond end of file")
        if nt_offset + 4 > size:
            raise _NotPE("no PE signature: file ends at e_lfanew")
        signature = _U32.unpack_from(mv, nt_offset)[0]
        if signature != 0x4550:
            kind = _NON_PE_SIGNATURES.get(signature & 0xFFFF)
            if kind:
                raise _NotPE(f"{kind} executable, not PE")
            raise _NotPE(f"no PE signature at 0x{nt_offset:x}")
        if nt_offset + 24 > size:
            raise _Malformed("COFF file header truncated")

        machine, sections, timestamp, _, _, optional_size, characteristics = _COFF.unpack_from(
            mv, nt_offset + 4
        )
        if characteristics & _FILE_DLL:
            file_type = "dll"
        elif characteristics & _FILE_EXECUTABLE_IMAGE:
            file_type = "exe"
        else:
            file_type = None
        self.record.update(
            machine=machine,
            architecture=_ARCHITECTURES.get(machine, "other"),
            file_type=file_type,
            timestamp=timestamp,
        )
        self.number_of_sections = sections
        self.size_of_optional_header = optional_size
        return nt_offset + 24

    def _read_optional_header(self, offset: int) -> None:
        window = bytes(self.mv[offset : offset + _OPTIONAL_HEADER_WINDOW])
        available = len(window)
        if available < _MIN_OPTIONAL_HEADER_32:
            raise _Malformed("optional header truncated")
        window = window.ljust(_OPT64.size, b"\0")
        magic = _U16.unpack_from(window, 0)[0]
        layout = _OPT32
        if magic == 0x20B:
            if available < _MIN_OPTIONAL_HEADER_64:
                raise _Malformed("PE32+ optional header truncated")
            layout = _OPT64
            self.pe32_plus = True
        fields = layout.unpack_from(window, 0)
        # PE32+ drops BaseOfData (index 8), so the later fields sit one place earlier.
        shift = 1 if layout is _OPT64 else 0
        entry_point = fields[6]
        section_alignment, file_alignment = fields[10 - shift], fields[11 - shift]
        subsystem, rva_count = fields[22 - shift], fields[29 - shift]
        self.section_alignment = section_alignment
        self.file_alignment = file_alignment
        self.record.update(
            pe_format=_PE_FORMATS.get(magic),  # pefile keeps going with an unknown magic
            subsystem=subsystem,
            entry_point=entry_point,
        )
        self._read_data_directories(offset + layout.size, rva_count)

    def _read_data_directories(self, offset: int, rva_count: int) -> None:
        # Entries cut by the end of the file are zero-padded, as pefile does; it stops when an
        # entry would start exactly at the end of the file.
        mv, size = self.mv, self.size
        for _ in range(min(rva_count & 0x7FFFFFFF, MAX_DATA_DIRECTORIES)):
            if size == offset:
                break
            raw = bytes(mv[offset : offset + 8]) if offset < size else b""
            self.directories.append(_DATA_DIRECTORY.unpack(raw.ljust(8, b"\0")))
            offset += 8

    def _directory_present(self, index: int) -> bool:
        if index >= len(self.directories):
            return False
        rva, size = self.directories[index]
        return rva != 0 and size != 0

    def _read_sections(self, offset: int) -> int:
        mv, size = self.mv, self.size
        section_alignment, file_alignment = self.section_alignment, self.file_alignment
        sections = self.sections
        for i in range(min(self.number_of_sections, MAX_SECTIONS)):
            start = offset + 40 * i
            raw = bytes(mv[start : start + 40])
            if raw.count(0) == 40 or not raw:
                break  # pefile stops at an all-zero or missing header
            if len(raw) < 40:
                raise _Malformed(f"section table truncated in header {i}")
            _, virtual_size, va, raw_size, ptr, _, _, _, _, _ = _SECTION.unpack(raw)

            # pefile drops the section and stops when three of these checks fail at once.
            errors = (
                (raw_size + ptr > size)
                + ((ptr & ~0x1FF) > size)
                + (virtual_size > 0x10000000)
                + (_adjust_section_alignment(va, section_alignment, file_alignment) > 0x10000000)
                + (file_alignment != 0 and ptr % file_alignment != 0)
            )
            if errors >= 3:
                break
            sections.append(_Section(va, virtual_size, raw_size, ptr))

        sections.sort(key=lambda s: s.va)
        for idx, section in enumerate(sections):
            following = sections[idx + 1].va if idx + 1 < len(sections) else None
            self._set_section_range(section, following)
        self.record["section_count"] = len(sections)

        if self.number_of_sections > 0 and sections:
            return offset + 40 * self.number_of_sections
        return offset

    def _set_section_range(self, s: _Section, following: int | None) -> None:
        # pefile's SectionStructure.contains_rva, computed once.
        s.va_adj = _adjust_section_alignment(s.va, self.section_alignment, self.file_alignment)
        s.ptr_adj = s.ptr & ~0x1FF
        if self.section_alignment < 0x1000 and s.ptr == s.va:
            s.ptr_adj = s.va
        if self.size - s.ptr_adj < s.raw_size:
            extent = s.virtual_size
        else:
            extent = max(s.raw_size, s.virtual_size)
        if following is not None and following > s.va and s.va_adj + extent > following:
            extent = following - s.va_adj
        s.lo, s.hi = s.va_adj, s.va_adj + extent

    def _set_header_window(self, table_end: int) -> None:
        # pefile serves RVAs outside every section from `header`: the file up to the first
        # section's data, or up to the end of the section table if that is later.
        pointers = [s.ptr & ~0x1FF for s in self.sections if s.ptr > 0]
        lowest = min(pointers) if pointers else None
        end = table_end if not lowest or lowest < table_end else lowest
        self.header = self.mv[:end]

    # -- address mapping (pefile's get_section_by_rva / get_data / get_offset_from_rva) ----

    def _section_by_rva(self, rva: int) -> _Section | None:
        last = self.last_section
        if last is not None and last.lo <= rva < last.hi:
            return last
        for s in self.sections:
            if s.lo <= rva < s.hi:
                self.last_section = s
                return s
        return None

    def _data_at_rva(self, rva: int, length: int | None) -> memoryview | None:
        """The bytes pefile's get_data(rva, length) returns, or None where it raises."""
        s = self._section_by_rva(rva)
        end = None if length is None else rva + length
        if s is None:
            if rva < len(self.header):
                return self.header[rva:end]
            if rva < self.size:
                return self.mv[rva:end]
            return None
        return self._section_data(s, rva, length)

    def _section_data(self, s: _Section, rva: int | None, length: int | None) -> memoryview:
        offset = s.ptr_adj if rva is None else rva - s.va_adj + s.ptr_adj
        end = offset + (s.raw_size if length is None else length)
        end = min(end, s.ptr + s.raw_size)
        return self.mv[offset:end]

    def _offset_from_rva(self, rva: int) -> int | None:
        """pefile's get_offset_from_rva, or None where it raises."""
        s = self._section_by_rva(rva)
        if s is None:
            return rva if rva < self.size else None
        return rva - s.va_adj + s.ptr_adj

    def _string_at_rva(self, rva: int, max_length: int) -> bytes:
        """pefile's get_string_at_rva: the bytes up to the first NUL, at most max_length."""
        s = self._section_by_rva(rva)
        if s is None:
            start, end = rva, rva + max_length
        else:
            start = rva - s.va_adj + s.ptr_adj
            end = min(start + max_length, s.ptr + s.raw_size)
        end = min(end, self.size)
        if start >= end:
            return b""
        data = self.searchable
        if data is None:
            text = bytes(self.mv[start:end])
            nul = text.find(0)
            return text if nul < 0 else text[:nul]
        nul = data.find(b"\0", start, end)
        text = data[start : end if nul < 0 else nul]
        return text if type(text) is bytes else bytes(text)  # bytearray: names are dict keys

    # -- directories -----------------------------------------------------------------------

    def _read_directories(self) -> None:
        record = self.record
        record.update(import_count=0, import_dll_count=0, export_count=0, imphash=None)
        # pefile walks the directory list starting with imports and stops at the first index
        # the table lacks, so with fewer than two entries it parses neither.
        if len(self.directories) <= _DIR_IMPORT:
            return
        import_rva, _ = self.directories[_DIR_IMPORT]
        if import_rva:
            dlls = self._read_imports(import_rva)
            record["import_dll_count"] = len(dlls)
            record["import_count"] = sum(len(symbols) for _, symbols in dlls)
            record["imphash"] = _imphash(dlls)
        export_rva, export_size = self.directories[_DIR_EXPORT]
        if export_rva:
            try:
                record["export_count"] = self._count_exports(export_rva, export_size)
            except _ExportsLost:
                record["export_count"] = 0

    def _read_imports(self, rva: int) -> list[tuple[bytes, list[bytes | int]]]:
        """(dll name, [symbol name or ordinal]) per descriptor, as pefile keeps them."""
        dlls: list[tuple[bytes, list[bytes | int]]] = []
        errors = 0
        while True:
            raw = self._data_at_rva(rva, 20)
            if raw is None or len(raw) < 20:
                break
            raw = bytes(raw)
            if raw == _EMPTY_DESCRIPTOR:
                break  # the all-zero descriptor ends the list
            first_original, _, _, name_rva, first_thunk = _IMPORT_DESCRIPTOR.unpack(raw)
            file_offset = self._offset_from_rva(rva)
            rva += 20

            # pefile bounds the thunk walk by the distance back to the descriptor when the
            # tables lie before it, otherwise by the rest of the file.
            max_length = self.size - (file_offset or 0)
            if rva > first_original or rva > first_thunk:
                max_length = max(rva - first_original, rva - first_thunk)

            symbols = self._read_thunks(first_original, first_thunk, max_length)
            if errors > MAX_IMPORT_DESCRIPTOR_ERRORS:
                break
            if not symbols:
                errors += 1
                continue

            dll = self._string_at_rva(name_rva, MAX_NAME_LENGTH)
            if dll.translate(None, _DOS_FILENAME_CHARS):
                dll = b"*invalid*"
            if dll:  # pefile silently skips a descriptor whose DLL name is empty
                dlls.append((dll, symbols))
        return dlls

    def _read_thunks(self, original_first: int, first: int, max_length: int) -> list[bytes | int]:
        """pefile's parse_imports: names and ordinals from the lookup (else address) table."""
        lookup = self._thunk_table(original_first, max_length)
        addresses = self._thunk_table(first, max_length)
        table = lookup or addresses
        if not table:
            return []

        ordinal_flag = _ORDINAL_FLAG64 if self.pe32_plus else _ORDINAL_FLAG32
        size = self.size
        section_by_rva, string_at_rva = self._section_by_rva, self._string_at_rva
        symbols: list[bytes | int] = []
        invalid = 0
        for idx, value in enumerate(table):
            if value & ordinal_flag:
                if value & 0xFFFF:  # pefile drops ordinal 0 without complaint
                    symbols.append(value & 0xFFFF)
                continue
            # Hint/name entry: pefile gives up on the whole table if the hint is unmappable
            # (outside every section and beyond the end of the file).
            if section_by_rva(value) is None and value >= size:
                return []
            name = string_at_rva(value + 2, MAX_NAME_LENGTH)
            if name.translate(None, _IMPORT_NAME_CHARS):
                if invalid > MAX_LEADING_INVALID_IMPORT_NAMES and invalid == idx:
                    return []
                invalid += 1
                continue
            if name:
                symbols.append(name)
        return symbols

    def _thunk_table(self, rva: int, max_length: int) -> list[int] | None:
        """pefile's get_import_table: the non-zero thunk values; None if unreadable.

        pefile reads one entry per call; we unpack runs of entries that map linearly (see
        _thunk_run) and then apply its per-entry checks in the same order.
        """
        if self.pe32_plus:
            width, ordinal_flag = 8, _ORDINAL_FLAG64
        else:
            width, ordinal_flag = 4, _ORDINAL_FLAG32
        table: list[int] = []
        # Name addresses below ([0]) and above ([1]) 4 GiB: the set of each, and its lowest
        # and highest member (pefile bounds the spread of each half separately).
        seen: tuple[set[int], set[int]] = (set(), set())
        lowest, highest = [0, 0], [0, 0]
        repeated = 0
        start = rva
        limit = start + max_length
        values: tuple[int, ...] = ()
        pos = 0
        while rva:
            if rva >= limit:
                break
            if self.thunks_read > MAX_IMPORT_THUNKS:
                break
            self.thunks_read += 1
            if repeated >= MAX_REPEATED_THUNK_ADDRESSES:
                return []
            if highest[0] - lowest[0] > MAX_THUNK_ADDRESS_SPREAD:
                return []
            if highest[1] - lowest[1] > MAX_THUNK_ADDRESS_SPREAD:
                return []

            if pos == len(values):
                values = self._thunk_run(rva, width, limit, len(table))
                pos = 0
                if not values:
                    return None
            value = values[pos]
            pos += 1
            if start <= value <= rva:
                break  # a name pointer into the table being read: garbage
            if not value:
                break
            if value & ordinal_flag:
                if value & 0x7FFFFFFF > 0xFFFF:
                    return []
            else:
                half = 1 if value >= 2**32 else 0
                addresses = seen[half]
                if value in addresses:
                    repeated += 1
                elif not addresses:
                    lowest[half] = highest[half] = value
                elif value < lowest[half]:
                    lowest[half] = value
                elif value > highest[half]:
                    highest[half] = value
                addresses.add(value)
            rva += width
            table.append(value)
        return table

    def _thunk_run(self, rva: int, width: int, limit: int, done: int) -> tuple[int, ...]:
        """Thunk values from `rva` on, as many as map linearly; () if the first is unreadable.

        Within one section every entry that starts inside its RVA range maps to the same
        section (the lookup cache returns it), so a run can be unpacked at once; outside
        every section entries are read one at a time, like pefile. Runs grow with the
        entries already read, so a short table costs a short read.
        """
        layout = "Q" if width == 8 else "I"
        s = self._section_by_rva(rva)
        if s is None:
            raw = self._data_at_rva(rva, width)
            if raw is None or len(raw) != width:
                return ()
            return struct.unpack(f"<{layout}", raw)
        offset = rva - s.va_adj + s.ptr_adj
        readable = (min(s.ptr + s.raw_size, self.size) - offset) // width
        in_section = -(-(s.hi - rva) // width)
        in_limit = -(-(limit - rva) // width)
        count = min(readable, in_section, in_limit, max(_THUNK_RUN, done), MAX_IMPORT_THUNKS + 2)
        if count <= 0:
            return ()
        return struct.unpack_from(f"<{count}{layout}", self.mv, offset)

    def _count_exports(self, rva: int, size: int) -> int:
        """pefile's parse_export_directory, counting the symbols it would list."""
        raw = self._data_at_rva(rva, 40)
        if raw is None or self._offset_from_rva(rva) is None or len(raw) < 40:
            return 0
        header = bytes(raw)
        (_, _, _, _, _, base, function_count, name_count, functions_rva, names_rva,
         ordinals_rva) = _EXPORT_DIRECTORY.unpack(header)

        arrays = []
        for array_rva, count in (
            (names_rva, name_count), (ordinals_rva, name_count), (functions_rva, function_count)
        ):
            offset = self._offset_from_rva(array_rva)
            if offset is None:
                return 0
            array = self._data_at_rva(array_rva, min(self.size - offset, count * 4))
            if array is None:
                return 0
            arrays.append(array)
        names, ordinals, functions = arrays

        named = self._named_exports(
            rva, size, base, name_count, names_rva, ordinals_rva, functions_rva,
            names, ordinals, functions,
        )
        if named is None:
            return 0
        ordinal_only = self._ordinal_only_exports(
            base, function_count, functions_rva, functions, named
        )
        if ordinal_only is None:
            return 0
        count = len(named) + ordinal_only
        if count == 0 and header.count(0) == 40:
            return 0
        return count

    def _scan_bound(self, array_rva: int, count: int) -> int:
        # pefile caps each pass by the bytes left in the section holding the array.
        bound = self.size
        s = self._section_by_rva(array_rva)
        if s is not None:
            data_len = len(self._section_data(s, None, None))
            bound = s.va + data_len - array_rva
        slots = min(count, int(bound / 4))
        if slots > MAX_EXPORT_SLOTS:
            self.record.update(
                status="partial",
                error=_short(f"export table of {slots} slots cut at {MAX_EXPORT_SLOTS}"),
            )
            slots = MAX_EXPORT_SLOTS
        return slots

    def _named_exports(
        self, rva: int, size: int, base: int, name_count: int, names_rva: int,
        ordinals_rva: int, functions_rva: int, names: memoryview, ordinals: memoryview,
        functions: memoryview,
    ) -> list[int] | None:
        """Ordinals of the exports pefile lists from the name table; None: none at all."""
        slots = self._scan_bound(names_rva, name_count)
        found: list[int] = []
        counts: dict[tuple[bytes, int], int] = {}
        failures = MAX_FAILED_EXPORT_ENTRIES
        functions_len = len(functions)
        # The three arrays unpacked once, each cut where pefile's reads would fail. Ordinals
        # are 16-bit, so no more than 0x10000 function slots can be reached.
        ordinal_values = _unpack_array("H", ordinals, slots)
        name_values = _unpack_array("I", names, slots)
        function_values = _unpack_array("I", functions, 0x10000)
        size_of_file = self.size
        section_by_rva, string_at_rva = self._section_by_rva, self._string_at_rva
        # pefile's get_offset_from_rva raises only outside every section and past the end.
        def unmappable(address: int) -> bool:
            return section_by_rva(address) is None and address >= size_of_file

        for i in range(slots):
            if i >= len(ordinal_values):
                return None
            index = ordinal_values[i]
            if index * 4 >= functions_len:
                return None
            if index >= len(function_values):
                continue
            address = function_values[index]
            if address == 0:
                continue
            if rva <= address < rva + size and unmappable(address):
                continue  # a forwarder string pefile cannot map

            if i >= len(name_values):
                break  # pefile then reads a name at RVA None, finds it invalid and stops
            name_rva = name_values[i]
            name = string_at_rva(name_rva, MAX_NAME_LENGTH)
            if name.translate(None, _EXPORT_NAME_CHARS):
                break
            if unmappable(name_rva):
                # pefile retries the same failing lookup once, counting both failures.
                failures -= 1
                if failures <= 0:
                    break
                failures -= 1
                if failures <= 0:
                    break
                continue

            key = (name, address)
            seen = counts.get(key, 0) + 1
            counts[key] = seen
            if seen > MAX_REPEATED_NAMED_EXPORTS or len(counts) > MAX_EXPORT_SYMBOLS:
                break
            if unmappable(ordinals_rva + 2 * i):
                raise _ExportsLost
            if unmappable(functions_rva + 4 * index):
                raise _ExportsLost
            found.append(base + index)
        return found

    def _ordinal_only_exports(
        self, base: int, function_count: int, functions_rva: int, functions: memoryview,
        named: list[int],
    ) -> int | None:
        """How many exports pefile lists from the address table alone; None: none at all.

        pefile also reads forwarder strings here; they change no count, so we skip them.
        """
        slots = self._scan_bound(functions_rva, function_count)
        taken = set(named)
        counts: dict[int | None, int] = {}
        failures = MAX_FAILED_EXPORT_ENTRIES
        functions_len = len(functions)
        found = 0
        for idx in range(slots):
            if idx + base in taken:
                continue
            if (idx + 1) * 4 > functions_len:
                address = None
                failures -= 1
                if failures <= 0:
                    return None
            else:
                address = _U32.unpack_from(functions, idx * 4)[0]
                if address == 0:
                    continue
            counts[address] = counts.get(address, 0) + 1
            if counts[address] > MAX_REPEATED_ORDINAL_EXPORTS or len(counts) > MAX_EXPORT_SYMBOLS:
                break
            found += 1
        return found

    def _overlay_size(self, optional_offset: int) -> int:
        # pefile's get_overlay_data_start_offset: the furthest end, within the file, of the
        # optional header, any section's raw data or any data directory but the signature.
        size = self.size
        largest = 0

        def consider(end: int) -> None:
            nonlocal largest
            if largest < end <= size:
                largest = end

        consider(optional_offset + self.size_of_optional_header)
        for s in self.sections:
            consider(s.ptr + s.raw_size)
        for idx, (dir_rva, dir_size) in enumerate(self.directories):
            if idx == _DIR_SECURITY:
                continue
            offset = self._offset_from_rva(dir_rva)
            if offset is not None:
                consider(offset + dir_size)
        return size - largest if size > largest else 0


def _unpack_array(layout: str, data: memoryview, limit: int) -> tuple[int, ...]:
    """The first `limit` little-endian items of `data` (fewer if it ends first)."""
    count = min(limit, len(data) // struct.calcsize(layout))
    return struct.unpack_from(f"<{count}{layout}", data) if count > 0 else ()


def _imphash(dlls: list[tuple[bytes, list[bytes | int]]]) -> str | None:
    """pefile's get_imphash over the kept descriptors; None where it returns ""."""
    if not dlls:
        return None
    parts = []
    for dll, symbols in dlls:
        library = dll.decode().lower()
        stem, dot, extension = library.rpartition(".")
        if dot and extension in _IMPHASH_STRIPPED_EXTENSIONS:
            library = stem
        for symbol in symbols:
            if isinstance(symbol, int):
                name = ordlookup.ordLookup(dll.lower(), symbol, make_name=True)
            else:
                name = symbol
            if isinstance(name, bytes):
                name = name.decode()
            parts.append(f"{library}.{name.lower()}")
    return md5(",".join(parts).encode()).hexdigest()
