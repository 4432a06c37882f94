"""Descriptors passed with messages over Unix sockets, bounded; peer credentials."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import anyio
import pytest

from aiomemmap._core.fdpass import (
    MAX_MESSAGE_FDS,
    Message,
    MessageTruncatedError,
    close_fds,
    peer_credentials,
    recv_message,
    recv_message_async,
    send_message,
    send_message_async,
)


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    a.settimeout(10)
    b.settimeout(10)
    yield a, b
    a.close()
    b.close()


def test_a_descriptor_travels_with_its_message(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    fd = os.memfd_create("fdpass-test")
    try:
        os.write(fd, b"shared bytes")
        send_message(a, b"hello", [fd])
        msg = recv_message(b, max_bytes=64, max_fds=1)
        assert msg.data == b"hello"
        assert len(msg.fds) == 1
        (got,) = msg.fds
        assert got != fd
        assert not os.get_inheritable(got)
        assert os.pread(got, 12, 0) == b"shared bytes"
        close_fds(msg.fds)
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("data", "nfds", "max_bytes", "max_fds"),
    [
        (b"x" * 100, 0, 99, 0),  # too long
        (b"x", 3, 64, 2),  # too many descriptors
        (b"x", 1, 64, 0),  # descriptors where none are accepted
    ],
    ids=["long", "many-fds", "unwanted-fd"],
)
def test_too_much_is_refused_whole_and_nothing_leaks(
    pair: tuple[socket.socket, socket.socket],
    data: bytes,
    nfds: int,
    max_bytes: int,
    max_fds: int,
) -> None:
    a, b = pair
    fds = [os.memfd_create(f"fdpass-{i}") for i in range(nfds)]
    try:
        before = open_fds()
        send_message(a, data, fds)
        with pytest.raises(MessageTruncatedError, match="refused"):
            recv_message(b, max_bytes=max_bytes, max_fds=max_fds)
        assert open_fds() == before
        # The next message is received normally.
        send_message(a, b"next")
        assert recv_message(b, max_bytes=max_bytes, max_fds=max_fds) == Message(
            b"next", ()
        )
    finally:
        close_fds(fds)


def test_end_of_connection_reads_empty(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    a.close()
    assert recv_message(b, max_bytes=16, max_fds=1) == Message(b"", ())


def test_bad_limits_and_messages_are_refused(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    with pytest.raises(ValueError, match="max_bytes"):
        recv_message(b, max_bytes=0)
    with pytest.raises(ValueError, match="max_fds"):
        recv_message(b, max_bytes=10, max_fds=MAX_MESSAGE_FDS + 1)
    with pytest.raises(ValueError, match="at least one byte"):
        send_message(a, b"")
    with pytest.raises(ValueError, match="at most"):
        send_message(a, b"x", [0] * (MAX_MESSAGE_FDS + 1))


def test_peer_credentials_are_the_kernels(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, _ = pair
    creds = peer_credentials(a)
    assert (creds.pid, creds.uid, creds.gid) == (os.getpid(), os.getuid(), os.getgid())


async def test_async_send_and_receive() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    a.setblocking(False)
    b.setblocking(False)
    fd = os.memfd_create("fdpass-async")
    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                received: list[Message] = []

                async def receive() -> None:
                    received.append(
                        await recv_message_async(b, max_bytes=32, max_fds=2)
                    )

                tg.start_soon(receive)
                await anyio.sleep(0.01)
                await send_message_async(a, b"ping", [fd])
            (msg,) = received
            assert msg.data == b"ping"
            assert len(msg.fds) == 1
            close_fds(msg.fds)
            send_message(a, b"y" * 40)
            with pytest.raises(MessageTruncatedError):
                await recv_message_async(b, max_bytes=32)
    finally:
        os.close(fd)
        a.close()
        b.close()
