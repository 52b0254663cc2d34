"""Wake-ups between the worker processes of one `python -m quart_iot` (`WORKERS`).

A worker that wrote a document tells the others its MAC over UNIX datagram sockets; each looks
at that document at once (the store then tells its own waiters), instead of at its next
directory sweep. The sockets have abstract names (Linux): nothing is created in the file
system, so a killed process leaves nothing behind. A datagram carries MACs only, and the
receiver only re-reads those documents, so what another local process could send costs a
`stat` at most.

The kernel queues few datagrams per socket (`net.unix.max_dgram_qlen`, 10 by default): a
sender never drops a MAC on a full queue (EAGAIN). It keeps the MACs not yet sent, one set per
peer, and sends them, several to a datagram, when the peer's queue has room again: each
peer's socket is connected, so the event loop is told when it does.
"""

import asyncio
import contextlib
import logging
import os
import re
import socket
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)

# Set by `python -m quart_iot` for its workers: "<group>:<this worker's index>:<workers>"; the
# group, random per start, keeps two instances on one host apart.
PEERS_ENV = "QUART_IOT_PEERS"
DATAGRAM_BYTES = 2048  # MACs per datagram, joined by newlines: about 110
MAC_BYTES = 17
_MAC = re.compile(r"[0-9a-f]{2}(-[0-9a-f]{2}){5}")  # canonical: all a worker ever sends
Check = Callable[[str], Coroutine[Any, Any, object]]


def peer_address(group: str, index: int) -> str:
    """The abstract socket name of one worker (the leading NUL keeps it off the disk)."""
    return f"\0quart_iot-peers-{group}-{index}"


class Peer:
    """One other worker: a datagram socket connected to it, and the MACs not yet sent."""

    __slots__ = ("address", "pending", "sock", "waiting_for_room")

    def __init__(self, address: str) -> None:
        self.address = address
        self.pending: dict[str, None] = {}  # an ordered set
        self.sock: socket.socket | None = None
        self.waiting_for_room = False

    def batch(self) -> list[str]:
        """The oldest pending MACs that fit in one datagram."""
        count = DATAGRAM_BYTES // (MAC_BYTES + 1)
        return [mac for mac, _ in zip(self.pending, range(count), strict=False)]


class Peers:
    """The other workers of this instance: tells them of this process's writes, hears theirs."""

    def __init__(self, group: str, index: int, count: int) -> None:
        self.address = peer_address(group, index)
        self.others = [Peer(peer_address(group, n)) for n in range(count) if n != index]
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._check: Check | None = None
        self._checks: set[asyncio.Task[object]] = set()
        self.told = 0  # MACs sent to another worker
        self.heard = 0  # MACs received from another worker

    @classmethod
    def from_environment(cls) -> "Peers | None":
        rest, _, count = os.environ.get(PEERS_ENV, "").rpartition(":")
        group, _, index = rest.rpartition(":")
        if not (group and index.isdigit() and count.isdigit() and len(index + count) < 6):
            return None
        return cls(group, int(index), int(count))

    def start(self, check: Check) -> None:
        """Listen (on the running loop); `check(mac)` looks at a document another one wrote."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind(self.address)
        self._sock, self._check = sock, check
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._received)

    def stop(self) -> None:
        assert self._loop is not None
        log.info("peers: told the other workers of %d write(s), heard of %d", self.told, self.heard)
        for peer in self.others:
            self._disconnect(peer)
        if self._sock is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    def wrote(self, mac: str) -> None:
        """This process wrote the document of `mac`: tell every other worker."""
        if self._sock is None:
            return
        for peer in self.others:
            peer.pending[mac] = None
            if not peer.waiting_for_room:
                self._send(peer)

    def _send(self, peer: Peer) -> None:
        """Send what is pending, until done or the peer's queue is full."""
        while peer.pending:
            batch = peer.batch()
            try:
                self._connected(peer).send("\n".join(batch).encode())
            except BlockingIOError:  # its queue is full: go on when it has room
                self._wait_for_room(peer)
                return
            except OSError:  # not there (not started yet, or gone): its sweep will see it
                self._disconnect(peer)
                peer.pending.clear()
                return
            for mac in batch:
                del peer.pending[mac]
            self.told += len(batch)

    def _connected(self, peer: Peer) -> socket.socket:
        if peer.sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.setblocking(False)
            peer.sock = sock
            sock.connect(peer.address)  # an OSError here: the peer is not listening
        return peer.sock

    def _wait_for_room(self, peer: Peer) -> None:
        assert self._loop is not None
        assert peer.sock is not None
        peer.waiting_for_room = True
        self._loop.add_writer(peer.sock.fileno(), self._room, peer)

    def _room(self, peer: Peer) -> None:
        self._stop_waiting(peer)
        self._send(peer)

    def _stop_waiting(self, peer: Peer) -> None:
        if peer.waiting_for_room and peer.sock is not None:
            assert self._loop is not None
            self._loop.remove_writer(peer.sock.fileno())
        peer.waiting_for_room = False

    def _disconnect(self, peer: Peer) -> None:
        self._stop_waiting(peer)
        if peer.sock is not None:
            peer.sock.close()
            peer.sock = None

    def _received(self) -> None:
        assert self._sock is not None
        with contextlib.suppress(BlockingIOError):
            while True:
                for mac in self._sock.recv(DATAGRAM_BYTES).decode("ascii", "replace").split():
                    if _MAC.fullmatch(mac):
                        self.heard += 1
                        self._start_check(mac)

    def _start_check(self, mac: str) -> None:
        assert self._loop is not None
        assert self._check is not None
        check = self._loop.create_task(self._check(mac))
        self._checks.add(check)
        check.add_done_callback(self._checks.discard)
