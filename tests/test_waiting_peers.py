"""Wake-ups between workers (`Peers`): none lost to a full datagram queue, nothing on disk."""

import asyncio
import secrets
import socket

import pytest

from quart_iot.waiting import PEERS_ENV, Peers
from quart_iot.waiting.peers import peer_address


def mac(n: int) -> str:
    return "-".join(f"{(n >> shift) & 0xFF:02x}" for shift in range(40, -8, -8))


def pair() -> tuple[Peers, Peers]:
    group = secrets.token_hex(8)
    return Peers(group, 0, 2), Peers(group, 1, 2)


async def test_a_burst_larger_than_the_kernel_queue_reaches_the_other_worker_whole() -> None:
    sender, receiver = pair()
    heard: list[str] = []
    all_heard = asyncio.Event()

    async def check(written: str) -> None:
        heard.append(written)
        if len(heard) == 1000:
            all_heard.set()

    sender.start(check)
    receiver.start(check)
    try:
        for n in range(1000):  # no turn of the loop in between: the receiver reads nothing
            sender.wrote(mac(n))
        assert sender.others[0].pending  # the queue filled (the kernel keeps 10 datagrams)
        async with asyncio.timeout(10):
            await all_heard.wait()
    finally:
        sender.stop()
        receiver.stop()
    assert sorted(heard) == sorted(mac(n) for n in range(1000))
    assert sender.told == receiver.heard == 1000


async def test_a_worker_not_listening_costs_nothing_and_is_told_once_it_is() -> None:
    sender, receiver = pair()
    heard: asyncio.Queue[str] = asyncio.Queue()

    async def check(written: str) -> None:
        heard.put_nowait(written)

    sender.start(check)
    try:
        sender.wrote(mac(1))  # not started: it has no waiters, its start reads everything
        assert not sender.others[0].pending
        receiver.start(check)
        sender.wrote(mac(2))
        async with asyncio.timeout(10):
            assert await heard.get() == mac(2)
    finally:
        sender.stop()
        receiver.stop()
    assert heard.empty()


def test_the_sockets_have_abstract_names() -> None:
    sender, _ = pair()
    assert sender.address.startswith("\0")  # Linux's abstract namespace: no file anywhere
    assert sender.others[0].address == peer_address(sender.address.split("-")[-2], 1)


@pytest.mark.parametrize(
    ("value", "peers"),
    [("ab12:0:2", True), ("ab12:1:2", True), ("", False), ("ab12:x:2", False), (":0:2", False)],
)
def test_the_environment_names_the_group_and_the_worker(
    monkeypatch: pytest.MonkeyPatch, value: str, peers: bool
) -> None:
    monkeypatch.setenv(PEERS_ENV, value)
    assert (Peers.from_environment() is not None) is peers


async def test_a_datagram_from_elsewhere_makes_a_worker_look_at_a_canonical_mac_only() -> None:
    _, receiver = pair()
    heard: asyncio.Queue[str] = asyncio.Queue()

    async def check(written: str) -> None:
        heard.put_nowait(written)

    receiver.start(check)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as other:
            other.sendto(
                b"\xff\n../etc/passwd AA-BB-CC-DD-EE-FF aa-bb-cc-dd-ee-ff", receiver.address
            )
        async with asyncio.timeout(10):
            assert await heard.get() == "aa-bb-cc-dd-ee-ff"
        await asyncio.sleep(0)
    finally:
        receiver.stop()
    assert heard.empty()  # nothing but a canonical MAC is looked at
