"""File descriptors passed with messages over Unix sockets, and peer credentials.

A message is one ``sendmsg`` of a few bytes with descriptors attached as
``SCM_RIGHTS``. Receiving is bounded: the caller says how many bytes and how
many descriptors it accepts, and a message with more of either is refused
as a whole (:class:`MessageTruncatedError`), with every descriptor that came
with it closed, so that a peer can neither flood the receiver with
descriptors nor slip a cut message past it. Received descriptors are
close-on-exec.

The blocking functions suit a synchronous client; :func:`recv_message_async`
and :func:`send_message_async` wait on the running event loop instead.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import os
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, final

from aiomemmap._core.errors import AiomemmapError

__all__ = [
    "MAX_MESSAGE_FDS",
    "Message",
    "MessageTruncatedError",
    "PeerCredentials",
    "close_fds",
    "peer_credentials",
    "recv_message",
    "recv_message_async",
    "send_message",
    "send_message_async",
]

MAX_MESSAGE_FDS: Final = 16
"""The most descriptors one message may carry in either direction."""

_FD_SIZE: Final = array.array("i").itemsize
_UCRED: Final = struct.Struct("3i")


class MessageTruncatedError(AiomemmapError, ValueError):
    """A message came with more bytes or descriptors than the receiver accepts.

    The message was dropped whole and its descriptors closed.
    """


@final
@dataclass(frozen=True, slots=True)
class PeerCredentials:
    """The process at the other end of a Unix socket, when it connected."""

    pid: int
    uid: int
    gid: int


@final
@dataclass(frozen=True, slots=True)
class Message:
    """A received message: its bytes and the descriptors it carried.

    The receiver owns ``fds``: it must close them (:func:`close_fds`).
    """

    data: bytes
    fds: tuple[int, ...]


def close_fds(fds: Sequence[int]) -> None:
    """Close every descriptor of ``fds``, ignoring ones already closed."""
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def peer_credentials(sock: socket.socket) -> PeerCredentials:
    """Return the credentials of the peer of a connected Unix socket.

    The kernel records them when the connection is made (``SO_PEERCRED``):
    the peer cannot forge them.

    Raises:
        OSError: ``sock`` is not a connected Unix socket.
    """
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return PeerCredentials(pid, uid, gid)


def _check_limits(max_bytes: int, max_fds: int) -> None:
    if type(max_bytes) is not int or max_bytes <= 0:
        raise ValueError(f"max_bytes must be a positive int, got {max_bytes!r}")
    if type(max_fds) is not int or not 0 <= max_fds <= MAX_MESSAGE_FDS:
        raise ValueError(
            f"max_fds must be an int in [0, {MAX_MESSAGE_FDS}], got {max_fds!r}"
        )


def _receive(sock: socket.socket, max_bytes: int, max_fds: int) -> Message:
    """One ``recvmsg``; raises ``BlockingIOError`` on a non-blocking empty socket."""
    anc_size = socket.CMSG_SPACE(max_fds * _FD_SIZE) if max_fds else 0
    # One byte more than accepted tells an over-long message from a full one
    # on a stream socket too (a datagram or packet socket sets MSG_TRUNC).
    data, ancdata, flags, _ = sock.recvmsg(
        max_bytes + 1, anc_size, socket.MSG_CMSG_CLOEXEC
    )
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            got = array.array("i")
            got.frombytes(payload[: len(payload) - len(payload) % _FD_SIZE])
            fds.extend(got)
    truncated = bool(flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC))
    if truncated or len(data) > max_bytes or len(fds) > max_fds:
        close_fds(fds)
        raise MessageTruncatedError(
            f"message refused: more than {max_bytes} bytes or {max_fds} "
            f"descriptors (got {len(data)} bytes, {len(fds)} descriptors"
            f"{', cut by the kernel' if truncated else ''})"
        )
    return Message(data, tuple(fds))


def recv_message(sock: socket.socket, *, max_bytes: int, max_fds: int = 0) -> Message:
    """Receive one message with at most ``max_bytes`` bytes and ``max_fds`` fds.

    Args:
        sock: A connected Unix socket (blocking, or with a timeout).
        max_bytes: The longest message accepted.
        max_fds: The most descriptors accepted.

    Returns:
        The message; empty ``data`` and no ``fds`` once the peer has closed
        its end.

    Raises:
        MessageTruncatedError: The message was too long or carried too many
            descriptors (it is dropped and its descriptors closed).
        ValueError: Bad limits.
        OSError: The socket failed (``TimeoutError`` on its timeout).
    """
    _check_limits(max_bytes, max_fds)
    return _receive(sock, max_bytes, max_fds)


def send_message(sock: socket.socket, data: bytes, fds: Sequence[int] = ()) -> None:
    """Send ``data`` with ``fds`` attached in one message.

    The descriptors stay open here (the receiver gets copies).

    Raises:
        ValueError: Empty ``data`` (it would read as the end of the
            connection), or more than :data:`MAX_MESSAGE_FDS` descriptors.
        OSError: The socket failed, or did not take the whole message.
    """
    if not data:
        raise ValueError("send_message: a message needs at least one byte")
    if len(fds) > MAX_MESSAGE_FDS:
        raise ValueError(
            f"send_message: at most {MAX_MESSAGE_FDS} descriptors, got {len(fds)}"
        )
    sent = socket.send_fds(sock, [data], list(fds)) if fds else sock.sendmsg([data])
    if sent != len(data):
        raise OSError(f"send_message: sent {sent} of {len(data)} bytes")


async def recv_message_async(
    sock: socket.socket, *, max_bytes: int, max_fds: int = 0
) -> Message:
    """:func:`recv_message` on a non-blocking socket, waiting on the running loop.

    Raises:
        As :func:`recv_message`.

    Cancellation:
        Nothing is received (a message that arrives later stays queued).
    """
    _check_limits(max_bytes, max_fds)
    loop = asyncio.get_running_loop()
    while True:
        try:
            return _receive(sock, max_bytes, max_fds)
        except (BlockingIOError, InterruptedError):
            pass
        ready = loop.create_future()
        fd = sock.fileno()
        loop.add_reader(fd, _set_ready, ready)
        try:
            await ready
        finally:
            loop.remove_reader(fd)


async def send_message_async(
    sock: socket.socket, data: bytes, fds: Sequence[int] = ()
) -> None:
    """:func:`send_message` on a non-blocking socket, waiting on the running loop.

    Raises:
        As :func:`send_message`.

    Cancellation:
        The message was sent whole or not at all.
    """
    loop = asyncio.get_running_loop()
    while True:
        try:
            send_message(sock, data, fds)
            return
        except (BlockingIOError, InterruptedError):
            pass
        ready = loop.create_future()
        fd = sock.fileno()
        loop.add_writer(fd, _set_ready, ready)
        try:
            await ready
        finally:
            loop.remove_writer(fd)


def _set_ready(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)
