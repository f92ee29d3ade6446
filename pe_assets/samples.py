"""Synthetic but valid PE files, and buckets of them, for the demo, the tests and the benchmark.

`build_pe` assembles one small PE image from its parts. `generate_samples` builds a pool of such
images once and stamps a per-file nonce and timestamp into copies of them, which is what makes a
million-file bucket cheap. Every sample comes with a `SampleSpec`: the metadata a careful parser
should report for it.

Expected specs for a written bucket: `write_sample_folder` and `upload_samples_s3` return them in
`SampleSummary.specs` when the bucket is small (see `SPECS_IN_SUMMARY_LIMIT`). For larger buckets
iterate `iter_bucket_objects` with the same arguments: it yields the same keys, bytes and specs.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import random
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from pe_assets.errors import PeAnalyzerError

logger = logging.getLogger(__name__)

# name -> (IMAGE_FILE_HEADER.Machine, is PE32+). Windows on ARM32 uses 0x1c4 (ARMNT, Thumb-2).
MACHINES: dict[str, tuple[int, bool]] = {
    "x86": (0x14C, False),
    "x64": (0x8664, True),
    "arm64": (0xAA64, True),
    "arm": (0x1C4, False),
}

# The values every linker uses; the parser and the tests rely on nothing else.
FILE_ALIGNMENT = 0x200
SECTION_ALIGNMENT = 0x1000
# Leaves room after the DOS stub for the tag that keeps corrupt samples unique (see _TAG_OFFSET).
E_LFANEW = 0x90
NUMBER_OF_DATA_DIRECTORIES = 16
# Default COFF timestamp: 2024-01-01, so a hand-built image looks recent but is reproducible.
DEFAULT_TIMESTAMP = 1_704_067_200
DEFAULT_IMPORTS: Mapping[str, Sequence[str | int]] = {
    "KERNEL32.dll": ("GetModuleHandleW", "ExitProcess", "GetLastError"),
}
# The nonce lives inside .text, after the entry stub; this many bytes are stamped per sample.
NONCE_SIZE = 16
# Names of the index files the public dataset keeps in every label folder.
INDEX_FILE_NAME = "00Tree.html"
# Above this many samples the summary leaves `specs` empty: a spec and its key cost ~300 bytes,
# so a million-file bucket would hold ~300 MB only to return it.
SPECS_IN_SUMMARY_LIMIT = 20_000
# Distinct template images per seed: enough variety in machines, import and export counts and
# sizes, few enough (~0.2 s) to build at the start of every run.
TEMPLATE_POOL_SIZE = 256

_IMAGE_FILE_RELOCS_STRIPPED = 0x0001
_IMAGE_FILE_EXECUTABLE_IMAGE = 0x0002
_IMAGE_FILE_LARGE_ADDRESS_AWARE = 0x0020
_IMAGE_FILE_32BIT_MACHINE = 0x0100
_IMAGE_FILE_DLL = 0x2000
_DLLCHARACTERISTICS_NX_COMPAT = 0x0100
_DLLCHARACTERISTICS_TERMINAL_SERVER_AWARE = 0x8000
_SCN_TEXT = 0x60000020  # CNT_CODE | MEM_EXECUTE | MEM_READ
_SCN_RDATA = 0x40000040  # CNT_INITIALIZED_DATA | MEM_READ
_SCN_DATA = 0xC0000040  # CNT_INITIALIZED_DATA | MEM_READ | MEM_WRITE
_DIR_EXPORT, _DIR_IMPORT, _DIR_IAT = 0, 1, 12

_COFF_FORMAT = "<HHIIIHH"
_OPTIONAL_PE32_FORMAT = "<HBBIIIIIIIIIHHHHHHIIIIHHIIIIII"
_OPTIONAL_PE32PLUS_FORMAT = "<HBBIIIIIQIIHHHHHHIIIIHHQQQQII"
_SECTION_FORMAT = "<8sIIIIIIHHI"
_TIMESTAMP_OFFSET = E_LFANEW + 4 + 4  # PE signature, then Machine and NumberOfSections
_NONCE_OFFSET_IN_TEXT = 0x10
# Corrupt samples carry their index here (DOS stub slack) because truncation may cut off .text.
_TAG_OFFSET = 0x80

# A real-mode program that prints the message and exits, as every linker emits it.
_DOS_STUB_CODE = bytes.fromhex("0e1fba0e00b409cd21b8014ccd21")
_DOS_STUB_MESSAGE = b"This program cannot be run in DOS mode.\r\r\n$"

# Entry stubs: return TRUE (DllMain) or 0 (exe). x86 DllMain is stdcall with 12 bytes of args.
_ENTRY_STUBS: dict[tuple[str, bool], bytes] = {
    ("x86", False): bytes.fromhex("31c0c3"),  # xor eax, eax; ret
    ("x86", True): bytes.fromhex("b801000000c20c00"),  # mov eax, 1; ret 12
    ("x64", False): bytes.fromhex("31c0c3"),
    ("x64", True): bytes.fromhex("b801000000c3"),  # mov eax, 1; ret
    ("arm64", False): bytes.fromhex("00008052c0035fd6"),  # mov w0, #0; ret
    ("arm64", True): bytes.fromhex("20008052c0035fd6"),  # mov w0, #1; ret
    ("arm", False): bytes.fromhex("00207047"),  # movs r0, #0; bx lr (Thumb)
    ("arm", True): bytes.fromhex("01207047"),  # movs r0, #1; bx lr (Thumb)
}
# Export targets are one-instruction "return" stubs spaced this far apart, so every exported
# address is distinct (pefile stops at more than 10 exports sharing one address).
_EXPORT_STUB_STRIDE = 0x10
_RETURN_STUBS = {"x86": b"\xc3", "x64": b"\xc3", "arm64": bytes.fromhex("c0035fd6"),
                 "arm": bytes.fromhex("7047")}


class SampleBucketError(PeAnalyzerError):
    """Writing a sample bucket failed (disk full, S3 refused an object, ...)."""


@dataclass(frozen=True, slots=True)
class SampleSpec:
    """The metadata a careful parser should report for one generated sample.

    `kind` says how the sample was made: "pe" (valid), "random" (non-PE bytes), "mz_only"
    (a DOS header without a PE image) or "truncated" (a PE cut inside its headers). For the
    corrupt kinds only `status` and `size` are asserted; the other fields are None.
    """

    status: str
    kind: str
    size: int
    machine: int | None = None
    architecture: str | None = None
    file_type: str | None = None
    import_count: int | None = None
    import_dll_count: int | None = None
    export_count: int | None = None
    subsystem: int | None = None
    timestamp: int | None = None
    section_count: int | None = None
    entry_point: int | None = None
    overlay_size: int | None = None


@dataclass(frozen=True)
class SampleSummary:
    """What a bucket writer did; `specs` maps object key to spec for small buckets only."""

    destination: str
    clean: int
    malicious: int
    corrupt: int
    index_files: int
    bytes_written: int
    seconds: float
    # Left out of repr: printing a summary must not print thousands of specs.
    specs: dict[str, SampleSpec] | None = field(default=None, repr=False)

    def __str__(self) -> str:
        return (f"{self.files_written} files ({self.clean} clean, {self.malicious} malicious, "
                f"{self.corrupt} corrupt, {self.index_files} index), {self.bytes_written} bytes "
                f"in {self.seconds:.2f} s ({self.files_per_second:.0f} files/s)")

    @property
    def files_written(self) -> int:
        return self.clean + self.malicious + self.index_files

    @property
    def files_per_second(self) -> float:
        return self.files_written / self.seconds if self.seconds > 0 else float("inf")


class _Image(NamedTuple):
    data: bytes
    nonce_offset: int
    spec: SampleSpec


def _align(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


def _code_bytes_probabilities() -> np.ndarray:
    # Code has a skewed byte histogram (entropy ~6.5 bits, not 8): weight 1/(rank + 4) over a
    # fixed shuffle of byte values. No byte exceeds ~6%, below pefile's 15% non-zero warning.
    order = np.random.default_rng(0x5EED).permutation(256)
    weights = np.empty(256)
    weights[order] = 1.0 / (np.arange(256) + 4.0)
    return weights / weights.sum()


_CODE_BYTE_P = _code_bytes_probabilities()


def _code_like_bytes(size: int, seed: int) -> bytearray:
    rng = np.random.default_rng(seed)
    return bytearray(rng.choice(256, size=size, p=_CODE_BYTE_P).astype(np.uint8).tobytes())


def _string_table(size: int, seed: int) -> bytes:
    """`size` bytes of NUL-terminated random identifiers, like a program's constant strings."""
    rng = random.Random(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_%.:\\ "
    out = bytearray()
    while len(out) < size:
        out += "".join(rng.choices(alphabet, k=rng.randint(4, 24))).encode() + b"\0"
    out[size - 1 :] = b"\0"
    return bytes(out[:size])


def _ascii(name: str, what: str) -> bytes:
    try:
        return name.encode("ascii")
    except UnicodeEncodeError as e:
        raise ValueError(f"{what} {name!r} is not ASCII") from e


def _build_text(machine: str, dll: bool, code_size: int, nonce: bytes, export_count: int,
                filler_seed: int) -> tuple[bytearray, list[int]]:
    """Return the .text contents and the offsets of the export stubs inside it."""
    stubs_start = _align(_NONCE_OFFSET_IN_TEXT + len(nonce), _EXPORT_STUB_STRIDE)
    size = max(code_size, stubs_start + export_count * _EXPORT_STUB_STRIDE)
    # Fill the whole raw section: zero padding would push the zero-byte share of a small image
    # over 50%, which pefile reports as a sign of truncation.
    text = _code_like_bytes(_align(size, FILE_ALIGNMENT), filler_seed)

    entry = _ENTRY_STUBS[(machine, dll)]
    text[: len(entry)] = entry
    text[_NONCE_OFFSET_IN_TEXT : _NONCE_OFFSET_IN_TEXT + len(nonce)] = nonce
    ret = _RETURN_STUBS[machine]
    stub_offsets = [stubs_start + i * _EXPORT_STUB_STRIDE for i in range(export_count)]
    for offset in stub_offsets:
        text[offset : offset + len(ret)] = ret
    return text, stub_offsets


def _build_imports(imports: Mapping[str, Sequence[str | int]], rva: int, pe32plus: bool
                   ) -> tuple[bytearray, tuple[int, int], tuple[int, int]]:
    """Lay out IAT, descriptors, ILT, hint/name table and DLL names from `rva` on.

    Returns the bytes and the (rva, size) of the import and IAT data directories. The IAT comes
    first, as MSVC places it, so the IAT directory is one contiguous range.
    """
    thunk_format, ordinal_flag = ("<Q", 1 << 63) if pe32plus else ("<I", 1 << 31)
    thunk_size = struct.calcsize(thunk_format)
    iat_size = sum(len(functions) + 1 for functions in imports.values()) * thunk_size
    descriptors_offset = iat_size
    ilt_offset = descriptors_offset + (len(imports) + 1) * 20
    names_offset = ilt_offset + iat_size

    names = bytearray()
    thunks: list[int] = []
    dll_name_offsets: list[int] = []
    hint = 0
    for functions in imports.values():
        if not functions:
            raise ValueError("every imported DLL needs at least one function")
        for function in functions:
            if isinstance(function, int):
                if not 0 < function <= 0xFFFF:
                    raise ValueError(f"import ordinal {function} outside 1..65535")
                thunks.append(ordinal_flag | function)
                continue
            thunks.append(rva + names_offset + len(names))
            names += struct.pack("<H", hint) + _ascii(function, "import name") + b"\0"
            names += b"\0" * (len(names) % 2)  # hint/name entries are 2-aligned
            hint += 1
        thunks.append(0)
    for dll in imports:
        dll_name_offsets.append(names_offset + len(names))
        names += _ascii(dll, "DLL name") + b"\0"

    thunk_table = b"".join(struct.pack(thunk_format, thunk) for thunk in thunks)
    out = bytearray(names_offset + len(names))
    out[0:iat_size] = thunk_table
    out[ilt_offset:names_offset] = thunk_table
    out[names_offset:] = names
    first_thunk = 0
    for i, (functions, name_offset) in enumerate(zip(imports.values(), dll_name_offsets,
                                                     strict=True)):
        # OriginalFirstThunk, TimeDateStamp, ForwarderChain, Name, FirstThunk
        struct.pack_into("<IIIII", out, descriptors_offset + 20 * i, rva + ilt_offset + first_thunk,
                         0, 0, rva + name_offset, rva + first_thunk)
        first_thunk += (len(functions) + 1) * thunk_size

    import_dir = (rva + descriptors_offset, (len(imports) + 1) * 20) if imports else (0, 0)
    iat_dir = (rva, iat_size) if imports else (0, 0)
    return out, import_dir, iat_dir


def _build_exports(module: str, names: Sequence[str], ordinal_only: int, targets: Sequence[int],
                   rva: int, timestamp: int) -> tuple[bytearray, tuple[int, int]]:
    """Lay out the export directory, its three tables and its strings from `rva` on."""
    encoded = sorted(_ascii(name, "export name") for name in names)  # the loader bisects
    if len(set(encoded)) != len(encoded):
        raise ValueError("export names must be unique")
    function_count = len(encoded) + ordinal_only
    eat_offset = 40
    name_pointers_offset = eat_offset + 4 * function_count
    ordinals_offset = name_pointers_offset + 4 * len(encoded)
    strings_offset = ordinals_offset + 2 * len(encoded)

    strings = bytearray(_ascii(module, "module name") + b"\0")
    name_rvas = []
    for name in encoded:
        name_rvas.append(rva + strings_offset + len(strings))
        strings += name + b"\0"
    out = bytearray(strings_offset) + strings
    # Characteristics, TimeDateStamp, Major/MinorVersion, Name, Base, NumberOfFunctions,
    # NumberOfNames, AddressOfFunctions, AddressOfNames, AddressOfNameOrdinals
    struct.pack_into("<IIHHIIIIIII", out, 0, 0, timestamp, 0, 0, rva + strings_offset, 1,
                     function_count, len(encoded), rva + eat_offset, rva + name_pointers_offset,
                     rva + ordinals_offset)
    struct.pack_into(f"<{function_count}I", out, eat_offset, *targets)
    struct.pack_into(f"<{len(encoded)}I", out, name_pointers_offset, *name_rvas)
    struct.pack_into(f"<{len(encoded)}H", out, ordinals_offset, *range(len(encoded)))
    return out, (rva, len(out))


def _dos_header() -> bytearray:
    header = bytearray(E_LFANEW)
    # e_magic, e_cblp, e_cp, e_crlc, e_cparhdr, e_minalloc, e_maxalloc, e_ss, e_sp, e_csum,
    # e_ip, e_cs, e_lfarlc: the values linkers write for a stub that fits in one paragraph.
    struct.pack_into("<2s12H", header, 0, b"MZ", 0x90, 3, 0, 4, 0, 0xFFFF, 0, 0xB8, 0, 0, 0, 0x40)
    struct.pack_into("<I", header, 0x3C, E_LFANEW)
    stub = _DOS_STUB_CODE + _DOS_STUB_MESSAGE
    header[0x40 : 0x40 + len(stub)] = stub
    return header


def _assemble(*, machine: str, dll: bool, imports: Mapping[str, Sequence[str | int]],
              exports: Sequence[str], ordinal_only_exports: int, subsystem: int | None,
              timestamp: int, overlay: bytes, nonce: bytes, code_size: int, data_size: int,
              filler_seed: int) -> _Image:
    if machine not in MACHINES:
        raise ValueError(f"machine must be one of {sorted(MACHINES)}, not {machine!r}")
    if ordinal_only_exports < 0:
        raise ValueError("ordinal_only_exports must be >= 0")
    machine_id, pe32plus = MACHINES[machine]
    subsystem = subsystem if subsystem is not None else (2 if dll else 3)
    export_count = len(exports) + ordinal_only_exports

    text, stub_offsets = _build_text(machine, dll, code_size, nonce, export_count, filler_seed)
    text_rva = SECTION_ALIGNMENT
    rdata_rva = _align(text_rva + len(text), SECTION_ALIGNMENT)
    rdata, import_dir, iat_dir = _build_imports(imports, rdata_rva, pe32plus)
    directories = [(0, 0)] * NUMBER_OF_DATA_DIRECTORIES
    directories[_DIR_IMPORT], directories[_DIR_IAT] = import_dir, iat_dir
    if export_count:
        rdata += b"\0" * (-len(rdata) % 4)
        module = "sample.dll" if dll else "sample.exe"
        targets = [text_rva + offset for offset in stub_offsets]
        export_bytes, directories[_DIR_EXPORT] = _build_exports(
            module, exports, ordinal_only_exports, targets, rdata_rva + len(rdata), timestamp)
        rdata += export_bytes
    # Constant strings fill the rest of the raw section, as they would in a compiled program.
    rdata += _string_table(_align(len(rdata) + 1, FILE_ALIGNMENT) - len(rdata), filler_seed)

    sections = [(b".text", text, _SCN_TEXT), (b".rdata", rdata, _SCN_RDATA)]
    if data_size:
        data = _code_like_bytes(_align(data_size, FILE_ALIGNMENT), filler_seed + 1)
        sections.append((b".data", data, _SCN_DATA))

    optional_format = _OPTIONAL_PE32PLUS_FORMAT if pe32plus else _OPTIONAL_PE32_FORMAT
    optional_size = struct.calcsize(optional_format) + 8 * NUMBER_OF_DATA_DIRECTORIES
    headers_end = E_LFANEW + 4 + 20 + optional_size + 40 * len(sections)
    size_of_headers = _align(headers_end, FILE_ALIGNMENT)

    table = bytearray()
    body = bytearray()
    rva, raw_pointer = text_rva, size_of_headers
    for name, contents, flags in sections:
        raw_size = _align(len(contents), FILE_ALIGNMENT)
        table += struct.pack(_SECTION_FORMAT, name, len(contents), rva, raw_size, raw_pointer,
                             0, 0, 0, 0, flags)
        body += contents + b"\0" * (raw_size - len(contents))
        rva = _align(rva + len(contents), SECTION_ALIGNMENT)
        raw_pointer += raw_size
    size_of_image = rva

    characteristics = _IMAGE_FILE_EXECUTABLE_IMAGE
    characteristics |= _IMAGE_FILE_LARGE_ADDRESS_AWARE if pe32plus else _IMAGE_FILE_32BIT_MACHINE
    characteristics |= _IMAGE_FILE_DLL if dll else _IMAGE_FILE_RELOCS_STRIPPED
    coff = struct.pack(_COFF_FORMAT, machine_id, len(sections), timestamp, 0, 0, optional_size,
                       characteristics)

    image_base = {(False, False): 0x400000, (False, True): 0x10000000,
                  (True, False): 0x140000000, (True, True): 0x180000000}[(pe32plus, dll)]
    # ARM images need Windows 8 (6.2); the others claim Vista (6.0), as current linkers do.
    os_version = (6, 2) if machine.startswith("arm") else (6, 0)
    dll_characteristics = _DLLCHARACTERISTICS_NX_COMPAT
    if not dll:
        dll_characteristics |= _DLLCHARACTERISTICS_TERMINAL_SERVER_AWARE
    initialized = sum(_align(len(c), FILE_ALIGNMENT) for _, c, _ in sections[1:])
    # Magic, linker version 14.38, SizeOfCode, SizeOfInitializedData, SizeOfUninitializedData,
    # AddressOfEntryPoint, BaseOfCode
    head: tuple[int, ...] = (0x20B if pe32plus else 0x10B, 14, 38, len(text), initialized, 0,
                             text_rva, text_rva)
    if not pe32plus:
        head += (rdata_rva,)  # BaseOfData exists in PE32 only
    optional = struct.pack(optional_format, *head, image_base, SECTION_ALIGNMENT, FILE_ALIGNMENT,
                           *os_version, 0, 0, *os_version, 0, size_of_image, size_of_headers, 0,
                           subsystem, dll_characteristics, 0x100000, 0x1000, 0x100000, 0x1000, 0,
                           NUMBER_OF_DATA_DIRECTORIES)
    optional += b"".join(struct.pack("<II", *entry) for entry in directories)

    headers = _dos_header() + b"PE\0\0" + coff + optional + table
    headers += b"\0" * (size_of_headers - len(headers))
    image = bytes(headers + body + overlay)

    spec = SampleSpec(
        status="ok", kind="pe", size=len(image), machine=machine_id, architecture=machine,
        file_type="dll" if dll else "exe",
        import_count=sum(len(functions) for functions in imports.values()),
        import_dll_count=len(imports), export_count=export_count, subsystem=subsystem,
        timestamp=timestamp, section_count=len(sections), entry_point=text_rva,
        overlay_size=len(overlay),
    )
    return _Image(image, size_of_headers + _NONCE_OFFSET_IN_TEXT, spec)


def build_pe(*, machine: str = "x64", dll: bool = False,
             imports: Mapping[str, Sequence[str | int]] = DEFAULT_IMPORTS,
             exports: Sequence[str] = (), ordinal_only_exports: int = 0,
             subsystem: int | None = None, timestamp: int = DEFAULT_TIMESTAMP,
             overlay: bytes = b"", nonce: bytes = b"", code_size: int = 0x100,
             data_size: int = 0, filler_seed: int = 0) -> bytes:
    """Assemble a minimal valid PE image.

    Sections: .text (entry stub, `nonce`, one return stub per export, code-like filler up to
    `code_size` bytes), .rdata (IAT, import descriptors, ILT, hint/name table, DLL names, export
    directory) and, when `data_size` > 0, .data. `subsystem` defaults to 2 (GUI) for a DLL and
    3 (console) for an exe. Imports map a DLL name to function names (str) or ordinals (int).
    `overlay` is appended after the last section. Raises ValueError for impossible requests.
    """
    return _assemble(machine=machine, dll=dll, imports=imports, exports=exports,
                     ordinal_only_exports=ordinal_only_exports, subsystem=subsystem,
                     timestamp=timestamp, overlay=overlay, nonce=nonce, code_size=code_size,
                     data_size=data_size, filler_seed=filler_seed).data


def spec_of_pe(*, machine: str = "x64", dll: bool = False,
               imports: Mapping[str, Sequence[str | int]] = DEFAULT_IMPORTS,
               exports: Sequence[str] = (), ordinal_only_exports: int = 0,
               subsystem: int | None = None, timestamp: int = DEFAULT_TIMESTAMP,
               overlay: bytes = b"", nonce: bytes = b"", code_size: int = 0x100,
               data_size: int = 0, filler_seed: int = 0) -> SampleSpec:
    """The `SampleSpec` of what `build_pe` returns for the same arguments."""
    return _assemble(machine=machine, dll=dll, imports=imports, exports=exports,
                     ordinal_only_exports=ordinal_only_exports, subsystem=subsystem,
                     timestamp=timestamp, overlay=overlay, nonce=nonce, code_size=code_size,
                     data_size=data_size, filler_seed=filler_seed).spec


# Import vocabulary for the template pool. LoadLibrary* and GetProcAddress are left out on
# purpose: pefile warns "typical of packed executables" when both appear among < 20 imports.
_IMPORT_VOCABULARY: dict[str, tuple[str, ...]] = {
    "KERNEL32.dll": ("CloseHandle", "CreateFileW", "ReadFile", "WriteFile", "GetLastError",
                     "ExitProcess", "GetModuleHandleW", "HeapAlloc", "HeapFree", "GetProcessHeap",
                     "Sleep", "GetTickCount", "VirtualAlloc", "VirtualFree", "CreateThread",
                     "WaitForSingleObject", "GetCommandLineW", "SetLastError", "GetFileSize",
                     "MultiByteToWideChar", "WideCharToMultiByte", "GetSystemTimeAsFileTime"),
    "USER32.dll": ("MessageBoxW", "CreateWindowExW", "DefWindowProcW", "DispatchMessageW",
                   "GetMessageW", "TranslateMessage", "PostQuitMessage", "RegisterClassExW",
                   "ShowWindow", "LoadIconW", "LoadCursorW", "SetWindowTextW"),
    "ADVAPI32.dll": ("RegOpenKeyExW", "RegQueryValueExW", "RegCloseKey", "RegSetValueExW",
                     "OpenProcessToken", "GetUserNameW", "CryptAcquireContextW"),
    "GDI32.dll": ("CreateFontW", "SelectObject", "DeleteObject", "BitBlt", "TextOutW"),
    "SHELL32.dll": ("ShellExecuteW", "SHGetFolderPathW", "CommandLineToArgvW"),
    "WS2_32.dll": ("WSAStartup", "WSACleanup", "socket", "connect", "send", "recv",
                   "closesocket", "htons"),
    "ole32.dll": ("CoInitializeEx", "CoUninitialize", "CoCreateInstance", "CoTaskMemFree"),
    "msvcrt.dll": ("malloc", "free", "memcpy", "memset", "strlen", "printf", "exit", "_errno"),
    "ntdll.dll": ("RtlInitUnicodeString", "NtClose", "RtlGetVersion", "NtQueryInformationProcess"),
    "WININET.dll": ("InternetOpenW", "InternetOpenUrlW", "InternetReadFile",
                    "InternetCloseHandle"),
    "CRYPT32.dll": ("CertOpenStore", "CertCloseStore", "CryptDecodeObjectEx"),
    "VERSION.dll": ("GetFileVersionInfoW", "GetFileVersionInfoSizeW", "VerQueryValueW"),
}
# Shares of the template pool, roughly those of a Windows malware corpus.
_MACHINE_WEIGHTS = {"x86": 0.45, "x64": 0.40, "arm64": 0.12, "arm": 0.03}
_DLL_SHARE = 0.3
_OVERLAY_SHARE = 0.2


def _random_imports(rng: random.Random) -> dict[str, list[str | int]]:
    if rng.random() < 0.03:
        return {}  # a few images import nothing at all (shellcode-like loaders)
    dlls = rng.sample(sorted(_IMPORT_VOCABULARY), rng.randint(1, 6))
    imports: dict[str, list[str | int]] = {}
    for dll in dlls:
        vocabulary = _IMPORT_VOCABULARY[dll]
        functions: list[str | int] = list(rng.sample(vocabulary, rng.randint(1, len(vocabulary))))
        if dll == "WS2_32.dll" and rng.random() < 0.5:
            # Old code imports ws2_32 by ordinal.
            functions = list(rng.sample(range(1, 120), rng.randint(1, 6)))
        imports[dll] = functions
    return imports


def _random_template(rng: random.Random, template_seed: int) -> _Image:
    machine = rng.choices(list(_MACHINE_WEIGHTS), weights=list(_MACHINE_WEIGHTS.values()))[0]
    dll = rng.random() < _DLL_SHARE
    exports: list[str] = []
    ordinal_only = 0
    if dll:
        exports = [f"Export{i:04d}" for i in rng.sample(range(10_000), rng.randint(0, 150))]
        ordinal_only = rng.choice((0, 0, 0, 1, 3, 10))
    elif rng.random() < 0.05:
        exports = ["ServiceMain"]  # some exes export an entry point for a host process
    # Log-uniform sizes: most samples are a few KB, a few reach tens of KB.
    code_size = int(2 ** rng.uniform(8, 14.5))
    data_size = rng.choice((0, 0, 0x40, 0x200, 0x1000))
    overlay = b""
    if rng.random() < _OVERLAY_SHARE:
        overlay = rng.randbytes(int(2 ** rng.uniform(4, 14)))
    return _assemble(machine=machine, dll=dll, imports=_random_imports(rng), exports=exports,
                     ordinal_only_exports=ordinal_only, subsystem=rng.choice((2, 3)),
                     timestamp=DEFAULT_TIMESTAMP, overlay=overlay, nonce=b"\0" * NONCE_SIZE,
                     code_size=code_size, data_size=data_size, filler_seed=template_seed)


@functools.lru_cache(maxsize=4)
def _template_pool(seed: int) -> tuple[_Image, ...]:
    rng = random.Random(f"templates-{seed}")
    return tuple(_random_template(rng, seed * TEMPLATE_POOL_SIZE + i)
                 for i in range(TEMPLATE_POOL_SIZE))


# Timestamps drawn for samples: 2005-01-01 .. 2025-01-01.
_TIMESTAMP_RANGE = (1_104_537_600, 1_735_689_600)
_FOREIGN_MAGICS = (b"", b"", b"\x7fELF\x02\x01\x01\0", b"PK\x03\x04", b"%PDF-1.7\n",
                   b"<html><head>", b"#!/bin/sh\n", b"ZM")


def _corrupt_sample(rng: random.Random, pool: Sequence[_Image], index: int
                    ) -> tuple[bytes, str, str]:
    """Return (bytes, kind, status) of one corrupt sample, unique through `index`."""
    tag = index.to_bytes(8, "little")
    kind = rng.choice(("random", "random", "mz_only", "truncated"))
    if kind == "random":
        magic = rng.choice(_FOREIGN_MAGICS)
        data = magic + tag + rng.randbytes(rng.randrange(16, 4096))
        if data[:2] == b"MZ":
            data = b"\0" + data[1:]
        return data, kind, "not_pe"

    template = bytearray(rng.choice(pool).data[:SECTION_ALIGNMENT])
    template[_TAG_OFFSET : _TAG_OFFSET + 8] = tag
    if kind == "mz_only":
        variant = rng.randrange(3)
        if variant == 0:  # a DOS program: header and stub, no PE image behind e_lfanew
            data = bytes(template[:E_LFANEW]) + rng.randbytes(rng.randrange(16, 512))
        elif variant == 1:  # e_lfanew points past the end of the file
            data = bytes(template[:E_LFANEW])
            data = data[:0x3C] + struct.pack("<I", 0x10000 + rng.randrange(1 << 16)) + data[0x40:]
        else:  # a 16-bit NE image: a header follows, but not a PE one
            data = bytes(template[:E_LFANEW]) + b"NE" + rng.randbytes(rng.randrange(64, 512))
        return data, kind, "not_pe"

    headers_end = E_LFANEW + 4 + 20 + struct.unpack_from("<H", template, E_LFANEW + 20)[0]
    headers_end += 40 * struct.unpack_from("<H", template, E_LFANEW + 6)[0]
    timestamp = rng.randrange(1 << 32).to_bytes(4, "little")
    template[_TIMESTAMP_OFFSET : _TIMESTAMP_OFFSET + 4] = timestamp
    return bytes(template[: rng.randrange(E_LFANEW + 4, headers_end)]), kind, "malformed"


def generate_samples(n: int, *, seed: int = 0, corrupt_share: float = 0.05
                     ) -> Iterator[tuple[str, bytes, SampleSpec]]:
    """Yield (sha256 hex name, bytes, expected spec) for `n` samples, deterministic per seed.

    Valid samples are copies of a pool of template images with a fresh nonce in .text and a
    fresh COFF timestamp; `corrupt_share` of the samples are non-PE data, MZ-only files or PE
    images truncated inside their headers. Names are unique within one call.
    """
    pool = _template_pool(seed)
    rng = random.Random(seed)
    low, high = _TIMESTAMP_RANGE
    for index in range(n):
        if rng.random() < corrupt_share:
            data, kind, status = _corrupt_sample(rng, pool, index)
            spec = SampleSpec(status=status, kind=kind, size=len(data))
        else:
            template = pool[rng.randrange(TEMPLATE_POOL_SIZE)]
            timestamp = rng.randrange(low, high)
            image = bytearray(template.data)
            image[_TIMESTAMP_OFFSET : _TIMESTAMP_OFFSET + 4] = timestamp.to_bytes(4, "little")
            # The random half makes names differ between seeds, the index half within one call.
            nonce = rng.getrandbits(64).to_bytes(8, "little") + index.to_bytes(8, "little")
            image[template.nonce_offset : template.nonce_offset + NONCE_SIZE] = nonce
            data = bytes(image)
            spec = replace(template.spec, timestamp=timestamp)
        yield hashlib.sha256(data).hexdigest(), data, spec


def _normalise_root(root: str) -> str:
    root = root.strip("/")
    return f"{root}/" if root else ""


def iter_bucket_objects(*, n_clean: int, n_malicious: int, seed: int = 0,
                        corrupt_share: float = 0.05, clean_prefix: str = "0/",
                        malicious_prefix: str = "1/", root: str = ""
                        ) -> Iterator[tuple[str, bytes, SampleSpec]]:
    """Yield (object key, bytes, spec) for a bucket, exactly as the writers below store it.

    The first `n_clean` samples of `generate_samples(n_clean + n_malicious, seed=seed)` go
    under the clean prefix and the rest under the malicious one.
    """
    root = _normalise_root(root)
    samples = generate_samples(n_clean + n_malicious, seed=seed, corrupt_share=corrupt_share)
    for index, (name, data, spec) in enumerate(samples):
        prefix = clean_prefix if index < n_clean else malicious_prefix
        yield f"{root}{prefix}{name}", data, spec


def _index_html(prefix: str, count: int) -> bytes:
    # The public dataset's index is a long HTML listing; the pipeline only needs to skip it.
    return (f"<!DOCTYPE html>\n<html><head><title>Index of {prefix}</title></head>\n"
            f"<body><h1>Index of {prefix}</h1><p>{count} files</p></body></html>\n").encode()


def _run_batched(items: Iterable[tuple[str, bytes]], handle: Callable[[str, bytes], None],
                 *, threads: int, batch_size: int) -> None:
    """Call `handle(key, data)` for every item on a thread pool, with few items in flight.

    Batches amortise the executor's per-task cost; the pending limit keeps memory flat however
    many items the iterator yields.
    """
    def run(batch: list[tuple[str, bytes]]) -> None:
        for key, data in batch:
            handle(key, data)

    pending: set[Future[None]] = set()
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="samples") as pool:
        batch: list[tuple[str, bytes]] = []
        for item in items:
            batch.append(item)
            if len(batch) < batch_size:
                continue
            pending.add(pool.submit(run, batch))
            batch = []
            if len(pending) >= 2 * threads:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    future.result()  # re-raises the first failure here
        if batch:
            pending.add(pool.submit(run, batch))
        for future in pending:
            future.result()


def _write_bucket(handle: Callable[[str, bytes], None], destination: str, *, root: str,
                  n_clean: int, n_malicious: int, seed: int, corrupt_share: float,
                  clean_prefix: str, malicious_prefix: str, with_index_files: bool,
                  threads: int, batch_size: int) -> SampleSummary:
    keep_specs = n_clean + n_malicious <= SPECS_IN_SUMMARY_LIMIT
    specs: dict[str, SampleSpec] = {}
    totals = {"bytes": 0, "corrupt": 0}
    started = time.perf_counter()

    def items() -> Iterator[tuple[str, bytes]]:
        for key, data, spec in iter_bucket_objects(
                n_clean=n_clean, n_malicious=n_malicious, seed=seed, corrupt_share=corrupt_share,
                clean_prefix=clean_prefix, malicious_prefix=malicious_prefix, root=root):
            totals["bytes"] += len(data)
            totals["corrupt"] += spec.status != "ok"
            if keep_specs:
                specs[key] = spec
            yield key, data
        if with_index_files:
            for prefix, count in ((clean_prefix, n_clean), (malicious_prefix, n_malicious)):
                data = _index_html(prefix, count)
                totals["bytes"] += len(data)
                yield f"{_normalise_root(root)}{prefix}{INDEX_FILE_NAME}", data

    _run_batched(items(), handle, threads=threads, batch_size=batch_size)
    seconds = time.perf_counter() - started
    summary = SampleSummary(destination=destination, clean=n_clean, malicious=n_malicious,
                            corrupt=totals["corrupt"], index_files=2 if with_index_files else 0,
                            bytes_written=totals["bytes"], seconds=seconds,
                            specs=specs if keep_specs else None)
    logger.info("wrote %d files (%d bytes) to %s in %.1f s (%.0f files/s)",
                summary.files_written, summary.bytes_written, destination, seconds,
                summary.files_per_second)
    return summary


# Local writes are a few syscalls each: a few threads overlap them with generation, more only
# contend for the GIL on a 2-core machine.
_FOLDER_THREADS = 4
_FOLDER_BATCH = 256
# S3 puts wait on the network, so many small batches keep all threads busy.
_S3_BATCH = 8


def write_sample_folder(dest: Path, *, n_clean: int, n_malicious: int, seed: int = 0,
                        corrupt_share: float = 0.05, clean_prefix: str = "0/",
                        malicious_prefix: str = "1/", with_index_files: bool = True
                        ) -> SampleSummary:
    """Write a folder bucket: dest/<clean_prefix><sha256>, dest/<malicious_prefix><sha256>.

    With `with_index_files` each label folder also gets an `00Tree.html`. Raises
    SampleBucketError when a file cannot be written.
    """
    dest = Path(dest)
    for prefix in (clean_prefix, malicious_prefix):
        (dest / prefix).mkdir(parents=True, exist_ok=True)

    def write(key: str, data: bytes) -> None:
        try:
            with open(dest / key, "wb") as f:
                f.write(data)
        except OSError as e:
            raise SampleBucketError(f"cannot write {dest / key}: {e}") from e

    return _write_bucket(write, str(dest), root="", n_clean=n_clean, n_malicious=n_malicious,
                         seed=seed, corrupt_share=corrupt_share, clean_prefix=clean_prefix,
                         malicious_prefix=malicious_prefix, with_index_files=with_index_files,
                         threads=_FOLDER_THREADS, batch_size=_FOLDER_BATCH)


def upload_samples_s3(client: Any, bucket: str, *, root: str = "", n_clean: int,
                      n_malicious: int, seed: int = 0, corrupt_share: float = 0.05,
                      clean_prefix: str = "0/", malicious_prefix: str = "1/",
                      with_index_files: bool = True, threads: int = 16) -> SampleSummary:
    """Upload a sample bucket with `put_object` on `threads` threads (boto3 clients are
    thread-safe). Keys are `<root>/<prefix><sha256>`. Raises SampleBucketError on a failed put.
    """
    from botocore.exceptions import BotoCoreError, ClientError  # only the S3 path needs boto

    def put(key: str, data: bytes) -> None:
        try:
            client.put_object(Bucket=bucket, Key=key, Body=data)
        except (BotoCoreError, ClientError) as e:
            raise SampleBucketError(f"cannot upload s3://{bucket}/{key}: {e}") from e

    return _write_bucket(put, f"s3://{bucket}/{_normalise_root(root)}", root=root,
                         n_clean=n_clean, n_malicious=n_malicious, seed=seed,
                         corrupt_share=corrupt_share, clean_prefix=clean_prefix,
                         malicious_prefix=malicious_prefix, with_index_files=with_index_files,
                         threads=threads, batch_size=_S3_BATCH)
