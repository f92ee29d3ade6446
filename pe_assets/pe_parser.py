"""Bytes in, one metadata record out. Pure: no Spark, no S3, no database.

First version: pefile with a full load. To be replaced by a faster reader (issue 3).
"""

from __future__ import annotations

import hashlib
from typing import Any

import pefile

PARSED_FIELDS: tuple[str, ...] = (
    "size", "sha256", "status", "error", "file_type", "architecture", "machine",
    "import_count", "import_dll_count", "export_count", "pe_format", "subsystem",
    "timestamp", "section_count", "entry_point", "has_signature", "is_dotnet",
    "overlay_size", "entropy", "imphash",
)

# Larger files are reported as too_large without being parsed.
MAX_FILE_SIZE = 256 * 1024 * 1024

_ARCHITECTURES = {0x14C: "x86", 0x8664: "x64", 0x1C0: "arm", 0x1C4: "arm", 0xAA64: "arm64",
                  0x200: "ia64"}


def empty_record(size: int, sha256: str | None, status: str, error: str | None) -> dict[str, Any]:
    record: dict[str, Any] = dict.fromkeys(PARSED_FIELDS)
    record.update(size=size, sha256=sha256, status=status, error=error)
    return record


def parse_pe(data: bytes) -> dict[str, Any]:
    size = len(data)
    digest = hashlib.sha256(data).hexdigest()
    if size > MAX_FILE_SIZE:
        return empty_record(size, digest, "too_large", f"{size} bytes > {MAX_FILE_SIZE}")
    if data[:2] != b"MZ":
        return empty_record(size, digest, "not_pe", "no MZ header")
    try:
        pe = pefile.PE(data=bytes(data))
    except pefile.PEFormatError as e:
        return empty_record(size, digest, "malformed", str(e)[:200])
    record = empty_record(size, digest, "ok", None)
    ch = pe.FILE_HEADER.Characteristics
    machine = pe.FILE_HEADER.Machine
    imports = getattr(pe, "DIRECTORY_ENTRY_IMPORT", [])
    exports = getattr(pe, "DIRECTORY_ENTRY_EXPORT", None)
    record.update(
        file_type="dll" if ch & 0x2000 else ("exe" if ch & 0x0002 else None),
        architecture=_ARCHITECTURES.get(machine, "other"),
        machine=machine,
        import_count=sum(len(d.imports) for d in imports),
        import_dll_count=len(imports),
        export_count=len(exports.symbols) if exports else 0,
    )
    return record
