"""Reading weight files that may be damaged or hostile, with answers decided from the file itself.

Model folders on a shared server hold whatever was downloaded or linked there. Before any
tensor is built, a file is checked to be a regular file (a link to a device or a pipe would
block or never end) and, for pickles, its structure is checked without unpickling anything:
the zip directory (stored members only, as `torch.save` writes them, so no member can expand
beyond the file), the pickle's opcodes (which Python objects it imports), and every tensor
record against the size its pickle declares. Only then does `torch.load(weights_only=True)`
see the file. So whether a file is unsafe, damaged or of the wrong kind is read from its bytes,
never from the wording of a library's error, and no allocation exceeds what the file holds.
"""

from __future__ import annotations

import io
import logging
import os
import pickletools
import re
import stat
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from .errors import IPAdapterError

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
WEIGHT_SUFFIXES = SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES
# Pickles of weights are small next to their tensors (an SDXL adapter's is ~60 kB); a larger one
# is not plain weights, and the unpickler's memory grows with it.
MAX_PICKLE_BYTES = 4 << 20
MAX_SAFETENSORS_HEADER = 2 << 20  # an SDXL checkpoint's is ~250 kB; parsing costs ~10x its size
MAX_ZIP_MEMBERS = 1 << 14  # an SDXL checkpoint has ~2,500; parsing the directory costs ~0.5 kB per member
ZIP_MAGIC = b"PK\x03\x04"
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # the number PyTorch before 1.6 wrote as its first pickle
LEGACY_PICKLES = 4  # magic number, protocol version, system info, then the object itself
# What torch.save writes for tensors, parameters and ordered dicts; anything else needs code.
PLAIN_GLOBALS = frozenset({
    "collections.OrderedDict",
    "torch._utils._rebuild_tensor",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_tensor_v3",
    "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state",
    "torch.storage.UntypedStorage",
})
STORAGE_NAME = re.compile(r"^torch\.([A-Z][A-Za-z0-9_]*Storage)$")
DTYPE_NAME = re.compile(r"^torch\.([a-z][a-z0-9_]*)$")


def weight_format(path: str | Path) -> str | None:
    """"safetensors", "pickle" or None, from the extension in any case (ComfyUI lists files that way)."""
    suffix = Path(path).suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        return "safetensors"
    if suffix in PICKLE_SUFFIXES:
        return "pickle"
    return None


def regular_file_size(path: str | Path, missing: str, what: str = "weights", fix: str = "Download it again.") -> int:
    """The size of `path` after following links; refuses what is not a non-empty regular file.

    missing: the sentence telling the user where the file belongs; what and fix: for an empty file.
    """
    path = Path(path)
    try:
        info = os.stat(path)
    except OSError:
        raise IPAdapterError(f"{path.name} was not found (or is a broken link): {path}. {missing}") from None
    if not stat.S_ISREG(info.st_mode):
        raise IPAdapterError(f"{path.name} is not a regular file (a folder, device or pipe, or a link to one): {path}. {missing}")
    if info.st_size == 0:
        raise IPAdapterError(f"{path.name} could not be read as {what}: the file is empty (a download or copy that did not finish). {fix}")
    return info.st_size


class FileDamaged(Exception):
    """Raised by the checks below with what is wrong; loaders turn it into their IPAdapterError."""


class UnsupportedFormat(Exception):
    """A well-formed file of a kind the loaders do not read (a plain pickle, PyTorch's pre-1.6 format)."""


class NeedsCode(Exception):
    """A well-formed pickle that imports Python objects beyond plain weights."""

    def __init__(self, names: list[str]):
        super().__init__(", ".join(names))
        self.names = names


@dataclass
class PickleScan:
    """What a pickle stream would build, read from its opcodes without running any of them."""

    imports: list[str] = field(default_factory=list)
    persistent_ids: list[tuple] = field(default_factory=list)
    end: int = 0  # offset just past its STOP opcode
    value: object = None  # the top-level value when it is a plain int (torch's legacy magic number)


@dataclass(frozen=True)
class Imported:
    name: str


MARK = object()
OPAQUE = object()


def scan_pickle(data: bytes | memoryview, start: int = 0) -> PickleScan:
    """Simulate the pickle machine's stack over the opcodes; only imports and persistent ids matter.

    Raises FileDamaged when the stream is malformed or ends early. Memory is bounded by the data:
    each opcode pushes at most one small value.
    """
    stream = io.BytesIO(data)
    stream.seek(start)
    scan = PickleScan()
    stack: list = []
    memo: dict = {}

    def pop(count: int = 1) -> list:
        if count > len(stack) or any(item is MARK for item in stack[len(stack) - count :]):
            raise FileDamaged("its pickle stream is malformed (stack underflow)")
        items = stack[len(stack) - count :]
        del stack[len(stack) - count :]
        return items

    def pop_to_mark() -> list:
        for index in range(len(stack) - 1, -1, -1):
            if stack[index] is MARK:
                items = stack[index + 1 :]
                del stack[index:]
                return items
        raise FileDamaged("its pickle stream is malformed (no mark)")

    try:
        for opcode, arg, position in pickletools.genops(stream):
            name = opcode.name
            if name in ("PROTO", "FRAME"):
                continue
            if name == "STOP":
                scan.value = pop()[0]
                scan.end = stream.tell()
                if stack:
                    raise FileDamaged("its pickle stream is malformed (values left on the stack)")
                return scan
            if name == "MARK":
                stack.append(MARK)
            elif name in ("GLOBAL", "INST"):
                module, _, attribute = str(arg).partition(" ")
                scan.imports.append(f"{module}.{attribute}")
                if name == "INST":
                    pop_to_mark()
                stack.append(Imported(f"{module}.{attribute}"))
            elif name == "STACK_GLOBAL":
                module, attribute = pop(2)
                if not isinstance(module, str) or not isinstance(attribute, str):
                    raise FileDamaged("its pickle stream is malformed (an import without a name)")
                scan.imports.append(f"{module}.{attribute}")
                stack.append(Imported(f"{module}.{attribute}"))
            elif name in ("EXT1", "EXT2", "EXT4"):
                scan.imports.append(f"copyreg extension {arg}")
                stack.append(OPAQUE)
            elif name == "BINPERSID":
                scan.persistent_ids.append(pop()[0])
                stack.append(OPAQUE)
            elif name == "PERSID":
                scan.persistent_ids.append(arg)
                stack.append(OPAQUE)
            elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
                if not stack or stack[-1] is MARK:
                    raise FileDamaged("its pickle stream is malformed (memo of nothing)")
                memo[len(memo) if name == "MEMOIZE" else arg] = stack[-1]
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                if arg not in memo:
                    raise FileDamaged("its pickle stream is malformed (unknown memo entry)")
                stack.append(memo[arg])
            elif name == "TUPLE":
                stack.append(tuple(pop_to_mark()))
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                stack.append(tuple(pop(int(name[-1]))))
            elif name == "EMPTY_TUPLE":
                stack.append(())
            elif opcode.arg is not None and not opcode.stack_before and len(opcode.stack_after) == 1:
                stack.append(arg)  # a literal: int, string, bytes, float
            else:
                before = opcode.stack_before
                if pickletools.markobject in before:
                    pop_to_mark()
                    before = before[: before.index(pickletools.markobject)]
                pop(len(before))
                stack.extend(OPAQUE for _ in opcode.stack_after)
    except (ValueError, KeyError, IndexError, TypeError, OverflowError) as error:  # genops' ways of saying "malformed"
        raise FileDamaged("its pickle stream is malformed or ends early") from error
    raise FileDamaged("its pickle stream ends early")


def storage_itemsize(imported: object) -> int | None:
    """Bytes per element of a storage class torch.save names, e.g. torch.HalfStorage -> 2."""
    if not isinstance(imported, Imported):
        return None
    if imported.name == "torch.storage.UntypedStorage":
        return 1
    match = STORAGE_NAME.match(imported.name)
    with warnings.catch_warnings():  # the legacy storage classes warn on every use; only their dtype is read
        warnings.simplefilter("ignore", UserWarning)
        storage = getattr(torch, match.group(1), None) if match else None
        dtype = getattr(storage, "dtype", None)
    return dtype.itemsize if isinstance(dtype, torch.dtype) else None


def unsafe_imports(imports: list[str]) -> list[str]:
    """Imports beyond plain weights: names torch.save does not write for tensors and dicts."""
    unsafe = []
    for name in imports:
        if name in PLAIN_GLOBALS:
            continue
        if STORAGE_NAME.match(name) and storage_itemsize(Imported(name)) is not None:
            continue
        match = DTYPE_NAME.match(name)
        if match and isinstance(getattr(torch, match.group(1), None), torch.dtype):
            continue
        if name not in unsafe:
            unsafe.append(name)
    return unsafe


def zip_member_count(path: Path, size: int) -> int:
    """The member count the zip's end record declares, read before the directory is parsed."""
    with open(path, "rb") as file:
        tail_start = max(0, size - (1 << 16) - 22)  # the end record and a comment of at most 64 kB
        file.seek(tail_start)
        tail = file.read()
        end = tail.rfind(b"PK\x05\x06")
        if end < 0 or end + 22 > len(tail):
            raise FileDamaged("its zip end record is missing")
        count = int.from_bytes(tail[end + 10 : end + 12], "little")
        locator = end - 20
        if count == 0xFFFF and locator >= 0 and tail[locator : locator + 4] == b"PK\x06\x07":  # zip64
            offset = int.from_bytes(tail[locator + 8 : locator + 16], "little")
            if offset + 56 > size:
                raise FileDamaged("its zip64 end record is missing")
            file.seek(offset)
            record = file.read(56)
            if record[:4] != b"PK\x06\x06":
                raise FileDamaged("its zip64 end record is missing")
            count = int.from_bytes(record[32:40], "little")
    return count


def check_torch_zip(path: Path, size: int) -> None:
    """Check a torch.save zip archive without unpickling: raises FileDamaged or NeedsCode."""
    declared = zip_member_count(path, size)
    if declared > MAX_ZIP_MEMBERS:
        raise FileDamaged(f"its zip archive lists {declared} members, far more than a weights file has")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
        raise FileDamaged("its zip directory is damaged or missing") from error
    with archive:
        members = archive.infolist()
        if len(members) > MAX_ZIP_MEMBERS:
            raise FileDamaged(f"its zip archive lists {len(members)} members, far more than a weights file has")
        names = [member.filename for member in members]
        if len(set(names)) != len(names):
            raise FileDamaged("its zip archive lists a member twice")
        for member in members:
            if member.compress_type != zipfile.ZIP_STORED or member.file_size != member.compress_size:
                raise FileDamaged(f"its zip member {member.filename!r} is compressed, which torch.save never does")
            if member.header_offset + member.file_size > size:
                raise FileDamaged(f"its zip member {member.filename!r} reaches past the end of the file")
        pickles = [name for name in names if name.count("/") == 1 and name.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise FileDamaged("its zip archive has no single data.pkl, so torch.save did not write it")
        prefix = pickles[0][: -len("data.pkl")]
        sizes = dict(zip(names, (member.file_size for member in members)))
        if sizes[pickles[0]] > MAX_PICKLE_BYTES:
            raise FileDamaged(f"its pickle is {sizes[pickles[0]] >> 20} MB, far more than plain weights need")
        try:
            data = archive.read(pickles[0])  # checks the CRC too
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
            raise FileDamaged("its pickle fails the zip checksum") from error
    scan = scan_pickle(data)
    unsafe = unsafe_imports(scan.imports)
    if unsafe:
        raise NeedsCode(unsafe)
    for pid in scan.persistent_ids:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise FileDamaged("its pickle refers to data in a form torch.save does not write")
        _, storage, key, _, numel = pid
        itemsize = storage_itemsize(storage)
        if itemsize is None or not isinstance(key, str) or not isinstance(numel, int) or isinstance(numel, bool) or numel < 0:
            raise FileDamaged("its pickle describes a tensor storage that torch.save does not write")
        record = f"{prefix}data/{key}"
        if record not in sizes:
            raise FileDamaged(f"its tensor record {record!r} is missing")
        if numel * itemsize > sizes[record]:
            raise FileDamaged(f"its tensor record {record!r} holds {sizes[record]} bytes but declares {numel * itemsize}")


def check_pickle_file(path: Path, size: int) -> None:
    """Any pickle-suffixed file: raises FileDamaged or NeedsCode unless torch.load may read it."""
    with open(path, "rb") as file:
        head = file.read(min(size, MAX_PICKLE_BYTES))
    if head.startswith(ZIP_MAGIC):
        check_torch_zip(path, size)
        return
    # Not torch's zip format: a plain pickle, PyTorch's pre-1.6 format (several pickles in a row,
    # then raw storages whose declared sizes are allocated before they are read), or junk.
    scan = scan_pickle(head)
    imports, legacy = list(scan.imports), scan.value == LEGACY_MAGIC
    for _ in range(LEGACY_PICKLES - 1 if legacy else 0):
        scan = scan_pickle(head, scan.end)
        imports += scan.imports
    unsafe = unsafe_imports(imports)
    if unsafe:
        raise NeedsCode(unsafe)
    raise UnsupportedFormat("a file in the format of PyTorch before 1.6" if legacy else "a plain pickle, not a torch.save file")


def describe(error: Exception, name: str, what: str, fix: str) -> IPAdapterError:
    """The user's message for a failed check: unsafe, unsupported, or damaged with what was found."""
    if isinstance(error, UnsupportedFormat):
        return IPAdapterError(
            f"{name} is {error}, which is not read here: its tensor sizes cannot be checked before they are allocated. "
            f"Use the .safetensors release of this {what}, or re-save the weights with a current torch.save."
        )
    if isinstance(error, NeedsCode):
        return IPAdapterError(
            f"{name} is a pickle that needs code to load (it imports {', '.join(error.names[:4])}): unpickling it could run "
            f"arbitrary code, so it was not loaded. Use the official .safetensors release of this {what}, or convert the "
            "file with a tool you trust."
        )
    return IPAdapterError(f"{name} could not be read as {what} weights: the file is corrupt or truncated ({error}). {fix}")


def load_pickle_weights(path: Path, size: int, mmap: bool = False) -> object:
    """torch.load(weights_only=True) of a file that passed check_pickle_file; FileDamaged if torch still fails."""
    check_pickle_file(path, size)
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except MemoryError:
        raise
    except Exception as error:  # noqa: BLE001  past the checks above, any failure means damaged data
        logging.debug("IP-Adapter: torch.load failed on %s after its structure checked out: %s", path, error)
        raise FileDamaged("PyTorch could not rebuild its tensors from the records") from error


def check_safetensors_header(path: Path) -> None:
    """The header's declared length, checked before any parser allocates for it."""
    with open(path, "rb") as file:
        prefix = file.read(8)
    if len(prefix) < 8:
        raise FileDamaged("it is too short to hold a safetensors header")
    length = int.from_bytes(prefix, "little")
    if length > MAX_SAFETENSORS_HEADER:
        raise FileDamaged(f"its header claims {length} bytes, far more than a weights file's header needs")


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    check_safetensors_header(path)
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, RuntimeError, ValueError, TypeError) as error:
        raise FileDamaged("its safetensors header or data is inconsistent") from error


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    check_safetensors_header(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as file:
            return {key: tuple(file.get_slice(key).get_shape()) for key in file.keys()}
    except (SafetensorError, OSError, RuntimeError, ValueError, TypeError) as error:
        raise FileDamaged("its safetensors header is inconsistent") from error


def read_weights(
    path: str | Path, what: str, missing: str, fix: str = "Download it again.", reader: Callable[[Path, int], object] | None = None
) -> object:
    """Load a weights file of any supported format, or raise IPAdapterError naming it.

    what: "IP-Adapter" or "CLIP vision", for the messages; missing: where the file belongs.
    reader: replaces the full load (e.g. shapes only); gets the path and the file's size.
    """
    path = Path(path)
    kind = weight_format(path)
    if kind is None:
        raise IPAdapterError(f"{path.name}: unsupported file type {path.suffix!r}; use .safetensors or .bin.")
    size = regular_file_size(path, missing, f"{what} weights", fix)
    try:
        if reader is not None:
            return reader(path, size)
        if kind == "safetensors":
            return load_safetensors(path)
        return load_pickle_weights(path, size)
    except (FileDamaged, NeedsCode, UnsupportedFormat) as error:
        raise describe(error, path.name, what, fix) from error
