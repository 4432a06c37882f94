"""The pager's socket protocol: messages, their limits and their validation.

A client talks to a :class:`~aiomemmap.pager.server.Pager` over a
``SOCK_SEQPACKET`` Unix socket, one message a packet, each a JSON object in
UTF-8 (descriptors attached as ``SCM_RIGHTS``):

1. client → pager, no descriptor: ``{"op": "map", "version": 1, "url": URL,
   "options": {NAME: VALUE}}`` asks for the file behind ``URL`` (opened by
   the engine with those storage options; values are JSON scalars).
2. pager → client: ``{"ok": true, "size": SIZE, "length": LENGTH,
   "pid": PID, "thread": THREAD}`` with one descriptor, the memfd that
   holds the file's pages at the file's offsets (``LENGTH`` is ``SIZE``
   rounded up to pages; ``PID`` and ``THREAD`` name the pager's process and
   event-loop thread); or ``{"ok": false, "error": KIND, "message": TEXT}``
   and the pager closes the connection.
3. client → pager, one descriptor (its userfaultfd): ``{"op": "register",
   "start": ADDRESS, "length": LENGTH, "features": BITS, "ioctls": BITS,
   "private": BOOL}`` says where, and how, the client mapped the memfd (all
   of it). A shared region (``"private": false``, the default when the
   field is absent) is mapped ``MAP_SHARED`` and registered for
   missing-page faults only; a private one is mapped ``MAP_PRIVATE`` and
   registered for missing- and minor-page faults. The pager checks the
   client's mappings against what it says, and refuses a mismatch.
4. pager → client: ``{"ok": true}``, or ``{"ok": true, "requests":
   ["populate"]}`` from a pager that answers step 5; or an error as in 2.

From then on the end of the connection tells the pager the client has gone.
The one message a client may send, to a pager that listed it in step 4:

5. client → pager, no descriptor: ``{"op": "populate", "offset": OFFSET,
   "length": LENGTH}`` (page-aligned, inside the region, at most
   :data:`MAX_POPULATE_BYTES`) asks the pager to install those pages of the
   region now, whoever touches them next (a client whose userfaultfd
   reports only user-mode faults needs this before a system call reads
   them); the pager answers ``{"ok": true, "poisoned": [OFFSET, ...]}``,
   the pages of the span it could not serve, once the others are in place.

Any other message is a protocol error that closes the connection.

Every message is bounded (:data:`MAX_REQUEST_BYTES`); anything malformed,
oversized, cut, or carrying descriptors it should not, is refused with a
``"protocol"`` error. This module only encodes and checks messages; it
imports nothing but the standard library and the core.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, final

from aiomemmap._core.pages import PAGE_SIZE

__all__ = [
    "MAX_OPTIONS",
    "MAX_POPULATE_BYTES",
    "MAX_REQUEST_BYTES",
    "MAX_URL_LENGTH",
    "PROTOCOL_VERSION",
    "REQUEST_POPULATE",
    "MapReply",
    "MapRequest",
    "PopulateRequest",
    "ProtocolError",
    "RegisterRequest",
    "decode_map_reply",
    "decode_map_request",
    "decode_populate_reply",
    "decode_populate_request",
    "decode_register_reply",
    "decode_register_request",
    "decode_status",
    "encode",
    "error_reply",
    "populate_reply",
    "populate_request",
]

PROTOCOL_VERSION: Final = 1
MAX_REQUEST_BYTES: Final = 16384
"""The longest message either side accepts."""
MAX_URL_LENGTH: Final = 8192
MAX_POPULATE_BYTES: Final = 256 * PAGE_SIZE
"""The longest span one populate request may ask for."""
REQUEST_POPULATE: Final = "populate"
MAX_OPTIONS: Final = 64
_MAX_OPTION_NAME: Final = 128
_MAX_OPTION_STR: Final = 1024
_ADDRESS_LIMIT: Final = 1 << 64

Scalar = str | int | float | bool | None


class ProtocolError(ValueError):
    """A message broke the protocol; the message says how."""


@final
@dataclass(frozen=True, slots=True)
class MapRequest:
    """Step 1: the file a client wants."""

    url: str
    options: dict[str, Scalar]


@final
@dataclass(frozen=True, slots=True)
class MapReply:
    """Step 2: the file's size, its mapping length and where the pager runs."""

    size: int
    length: int
    pid: int
    thread: int


@final
@dataclass(frozen=True, slots=True)
class RegisterRequest:
    """Step 3: where the client mapped and registered the memfd."""

    start: int
    length: int
    features: int
    ioctls: int
    private: bool = False


@final
@dataclass(frozen=True, slots=True)
class PopulateRequest:
    """Step 5: a span of the region to install now."""

    offset: int
    length: int


def encode(obj: Mapping[str, object]) -> bytes:
    """Encode one message.

    Raises:
        ProtocolError: It would exceed :data:`MAX_REQUEST_BYTES`.
    """
    data = json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()
    if len(data) > MAX_REQUEST_BYTES:
        raise ProtocolError(f"message of {len(data)} bytes exceeds {MAX_REQUEST_BYTES}")
    return data


def error_reply(kind: str, message: str) -> bytes:
    """Encode a refusal (the message is cut to fit)."""
    return encode({"ok": False, "error": kind, "message": message[:4096]})


def _object(data: bytes, what: str) -> dict[str, object]:
    if not data:
        raise ProtocolError(f"{what}: empty message (connection closed?)")
    if len(data) > MAX_REQUEST_BYTES:
        raise ProtocolError(f"{what}: {len(data)} bytes exceeds {MAX_REQUEST_BYTES}")
    try:
        obj = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ProtocolError(f"{what}: not a JSON message ({exc})") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"{what}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _no_constant(name: str) -> object:
    raise ProtocolError(f"{name} is not allowed")


def _keys(
    obj: dict[str, object], what: str, required: set[str], optional: set[str]
) -> None:
    missing = required - obj.keys()
    extra = obj.keys() - required - optional
    if missing or extra:
        raise ProtocolError(
            f"{what}: missing fields {sorted(missing)}, unknown fields {sorted(extra)}"
        )


def _uint(
    obj: dict[str, object], key: str, what: str, limit: int = _ADDRESS_LIMIT
) -> int:
    value = obj[key]
    if type(value) is not int or not 0 <= value < limit:
        raise ProtocolError(
            f"{what}: {key} must be an int in [0, {limit}), got {value!r}"
        )
    return value


def decode_map_request(data: bytes) -> MapRequest:
    """Check and decode step 1.

    Raises:
        ProtocolError: Anything wrong with it.
    """
    what = "map request"
    obj = _object(data, what)
    _keys(obj, what, {"op", "version", "url"}, {"options"})
    if obj["op"] != "map":
        raise ProtocolError(f"{what}: op must be 'map', got {obj['op']!r}")
    if obj["version"] != PROTOCOL_VERSION:
        raise ProtocolError(
            f"{what}: protocol version {obj['version']!r} is not {PROTOCOL_VERSION}"
        )
    url = obj["url"]
    if not isinstance(url, str) or not 0 < len(url) <= MAX_URL_LENGTH or "\0" in url:
        raise ProtocolError(
            f"{what}: url must be a non-empty string without NUL "
            f"of at most {MAX_URL_LENGTH} characters"
        )
    raw = obj.get("options", {})
    if not isinstance(raw, dict) or len(raw) > MAX_OPTIONS:
        raise ProtocolError(
            f"{what}: options must be an object of at most {MAX_OPTIONS} entries"
        )
    options: dict[str, Scalar] = {}
    for name, value in raw.items():
        if not name.isidentifier() or len(name) > _MAX_OPTION_NAME:
            raise ProtocolError(
                f"{what}: option name {name[:64]!r} is not an identifier"
            )
        if isinstance(value, str) and len(value) > _MAX_OPTION_STR:
            raise ProtocolError(
                f"{what}: option {name} is longer than {_MAX_OPTION_STR}"
            )
        if value is not None and not isinstance(value, str | int | float | bool):
            raise ProtocolError(f"{what}: option {name} must be a JSON scalar")
        options[name] = value
    return MapRequest(url, options)


def decode_map_reply(data: bytes) -> MapReply:
    """Check and decode step 2 (a success; see :func:`decode_status`).

    Raises:
        ProtocolError: Anything wrong with it.
    """
    what = "map reply"
    obj = _object(data, what)
    _keys(obj, what, {"ok", "size", "length", "pid", "thread"}, set())
    size = _uint(obj, "size", what)
    length = _uint(obj, "length", what)
    if length % PAGE_SIZE or not size <= length < size + PAGE_SIZE:
        raise ProtocolError(
            f"{what}: length {length} is not size {size} rounded to pages"
        )
    return MapReply(size, length, _uint(obj, "pid", what), _uint(obj, "thread", what))


def decode_register_request(data: bytes) -> RegisterRequest:
    """Check and decode step 3 (the range is checked against the file later).

    Raises:
        ProtocolError: Anything wrong with it.
    """
    what = "register request"
    obj = _object(data, what)
    _keys(obj, what, {"op", "start", "length", "features", "ioctls"}, {"private"})
    if obj["op"] != "register":
        raise ProtocolError(f"{what}: op must be 'register', got {obj['op']!r}")
    start = _uint(obj, "start", what)
    length = _uint(obj, "length", what)
    if start % PAGE_SIZE or length % PAGE_SIZE or length == 0:
        raise ProtocolError(
            f"{what}: start {start:#x} and length {length} must be "
            "page-aligned, the length non-zero"
        )
    if start + length > _ADDRESS_LIMIT:
        raise ProtocolError(f"{what}: the range overflows")
    private = obj.get("private", False)
    if type(private) is not bool:
        raise ProtocolError(f"{what}: private must be true or false, got {private!r}")
    return RegisterRequest(
        start,
        length,
        _uint(obj, "features", what),
        _uint(obj, "ioctls", what),
        private,
    )


def decode_register_reply(data: bytes) -> frozenset[str]:
    """Check and decode step 4 (a success): the requests the pager answers.

    Raises:
        ProtocolError: Anything wrong with it.
    """
    what = "register reply"
    obj = _object(data, what)
    _keys(obj, what, {"ok"}, {"requests"})
    requests = obj.get("requests", [])
    if (
        not isinstance(requests, list)
        or len(requests) > 16
        or not all(isinstance(name, str) for name in requests)
    ):
        raise ProtocolError(f"{what}: requests must be a short list of names")
    return frozenset(name for name in requests if isinstance(name, str))


def populate_request(offset: int, length: int) -> bytes:
    """Encode step 5."""
    return encode({"op": REQUEST_POPULATE, "offset": offset, "length": length})


def decode_populate_request(data: bytes, region_length: int) -> PopulateRequest:
    """Check and decode step 5 against a region of ``region_length`` bytes.

    Raises:
        ProtocolError: Anything wrong with it (a span misaligned, empty,
            too long or outside the region included).
    """
    what = "populate request"
    obj = _object(data, what)
    _keys(obj, what, {"op", "offset", "length"}, set())
    if obj["op"] != REQUEST_POPULATE:
        raise ProtocolError(f"{what}: op must be 'populate', got {obj['op']!r}")
    offset = _uint(obj, "offset", what)
    length = _uint(obj, "length", what)
    if (
        offset % PAGE_SIZE
        or length % PAGE_SIZE
        or not 0 < length <= MAX_POPULATE_BYTES
        or offset + length > region_length
    ):
        raise ProtocolError(
            f"{what}: [{offset}, {offset + length}) must be whole pages, at most "
            f"{MAX_POPULATE_BYTES} bytes, inside the region of {region_length}"
        )
    return PopulateRequest(offset, length)


def populate_reply(poisoned: list[int]) -> bytes:
    """Encode the answer to step 5."""
    return encode({"ok": True, "poisoned": sorted(poisoned)})


def decode_populate_reply(data: bytes, request: PopulateRequest) -> list[int]:
    """Check and decode the answer to ``request``: the offsets poisoned.

    Raises:
        ProtocolError: Malformed, or names pages outside the request.
        FileNotFoundError, PermissionError, OSError: A refusal.
    """
    what = "populate reply"
    obj = decode_status(data, what)
    _keys(obj, what, {"ok", "poisoned"}, set())
    poisoned = obj["poisoned"]
    end = request.offset + request.length
    if not isinstance(poisoned, list) or not all(
        type(o) is int and request.offset <= o < end and o % PAGE_SIZE == 0
        for o in poisoned
    ):
        raise ProtocolError(f"{what}: poisoned must list pages of the request")
    return [o for o in poisoned if isinstance(o, int)]


def decode_status(data: bytes, what: str) -> dict[str, object]:
    """Decode a reply and raise the error it reports, if any.

    Raises:
        ProtocolError: The reply is malformed, or is a ``"protocol"`` refusal.
        FileNotFoundError, PermissionError, OSError: The pager's refusal of
            that kind.
    """
    obj = _object(data, what)
    if obj.get("ok") is True:
        return obj
    kind, message = obj.get("error"), obj.get("message")
    if not isinstance(kind, str) or not isinstance(message, str):
        raise ProtocolError(f"{what}: malformed reply")
    text = f"pager refused: {message}"
    if kind == "protocol":
        raise ProtocolError(text)
    if kind == "not_found":
        raise FileNotFoundError(text)
    if kind == "permission":
        raise PermissionError(text)
    if kind == "value":
        raise ValueError(text)
    raise OSError(text)
