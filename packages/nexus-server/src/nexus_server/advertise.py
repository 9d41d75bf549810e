"""``nexus advertise``: announce an inference server over mDNS until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import signal
import socket
import sys

import zeroconf

from nexus_core.discovery import Advertisement, Advertiser, MdnsUnavailable, base_path


def _error(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def check(advertisement: Advertisement, known_types: list[str]) -> list[str]:
    """Problems that make the advertisement unusable, one line each (empty: fine)."""
    problems: list[str] = []
    if not 1 <= advertisement.port <= 65535:
        problems.append(f"--port: must be 1-65535 (got {advertisement.port})")
    try:
        base_path(advertisement.api_path)
    except ValueError as exc:
        problems.append(f"--api-path: {exc}")
    for address in advertisement.addresses:
        try:
            socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address)
        except OSError:
            problems.append(f"--address: not an IP address: {address!r}")
    label = advertisement.instance_label
    if not label.strip() or len(label.encode()) > 63:
        problems.append(f"--name: must be 1-63 bytes (got {label!r})")
    kind = advertisement.type
    if kind is not None and kind not in known_types:
        close = difflib.get_close_matches(kind, known_types, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        # Not fatal: the Nexus that finds it may have a plugin this machine lacks.
        _error(f"warning: {kind!r} is not a backend type installed here{hint}")
    return problems


def run(advertisement: Advertisement, interfaces: list[str]) -> int:
    """Announce until interrupted; 0 after a clean withdrawal, 1 if mDNS cannot run here."""
    return asyncio.run(_run(advertisement, interfaces))


async def _run(advertisement: Advertisement, interfaces: list[str]) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # Windows: Ctrl-C still interrupts
            loop.add_signal_handler(signum, stop.set)
    advertiser = Advertiser(advertisement, interfaces=interfaces)
    try:
        addresses = advertiser.addresses
        await _warn_if_closed(addresses[0], advertisement.port)
        info = await advertiser.start()
    except (MdnsUnavailable, OSError, RuntimeError, ValueError, zeroconf.Error) as exc:
        _error(f"cannot advertise over mDNS: {exc}")
        return 1
    txt = " ".join(f"{key}={value}" for key, value in advertisement.txt().items()) or "(none)"
    where = ", ".join(f"{address}:{advertisement.port}" for address in addresses)
    print(f"advertising {info.name!r} at {where}; TXT {txt}", flush=True)
    print("press Ctrl-C (or send SIGTERM) to withdraw it", flush=True)
    try:
        await stop.wait()
    finally:
        await advertiser.stop()
    print(f"withdrawn {info.name!r}", flush=True)
    return 0


async def _warn_if_closed(address: str, port: int) -> None:
    """A friendly warning when nothing listens where clients will be sent."""
    try:
        async with asyncio.timeout(1):
            _, writer = await asyncio.open_connection(address, port)
    except (OSError, TimeoutError) as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        _error(f"warning: nothing answers at {address}:{port} yet ({reason}); advertising anyway")
        return
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
