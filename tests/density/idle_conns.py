"""Measures the server's memory per idle authenticated WebSocket connection.

Starts nothing itself: give it a running server's pid, its ws address and a token. It reads
the server's RSS, opens COUNT upgraded /ws connections (source addresses 127.0.0.1 to
127.0.0.9 in turn, so the ephemeral ports of one address never run short), checks each got
101, lets them sit idle, reads the RSS again, and prints the growth per connection.

Usage: idle_conns.py PID HOST:PORT TOKEN COUNT
The client holds COUNT sockets, so its own file limit (ulimit -n) must exceed COUNT.
"""

import socket
import sys
import time


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def upgrade(host: str, port: int, source: str, token: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.settimeout(10)
    sock.connect((host, port))
    request = (
        "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        f"Authorization: Bearer {token}\r\n\r\n"
    )
    sock.sendall(request.encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(1024)
        if not chunk:
            raise RuntimeError("closed during the upgrade")
        answer += chunk
    if not answer.startswith(b"HTTP/1.1 101 "):
        raise RuntimeError(f"refused: {answer[:80]!r}")
    return sock


def main() -> None:
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    pid = int(sys.argv[1])
    host, port = sys.argv[2].rsplit(":", 1)
    token = sys.argv[3]
    count = int(sys.argv[4])

    # A few connections first, so that the shards' pools and tables exist before the baseline.
    warmup = [upgrade(host, int(port), "127.0.0.1", token) for _ in range(20)]
    time.sleep(0.5)
    before = rss_kib(pid)
    started = time.monotonic()
    conns = []
    for index in range(count):
        source = f"127.0.0.{1 + index % 9}"
        conns.append(upgrade(host, int(port), source, token))
    opened = time.monotonic() - started
    # Let the server settle: every connection is upgraded and idle now.
    time.sleep(2)
    after = rss_kib(pid)
    growth = after - before
    print(
        f"{count} idle authenticated connections opened in {opened:.1f}s; "
        f"server RSS {before} KiB -> {after} KiB, +{growth} KiB, "
        f"{growth * 1024 / count:.0f} bytes per connection"
    )
    for sock in conns + warmup:
        sock.close()


if __name__ == "__main__":
    main()
