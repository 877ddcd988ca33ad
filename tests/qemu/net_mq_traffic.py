"""Traffic for the multiqueue virtio-net scenario, run inside its network
namespace (`ip netns exec NS python3 net_mq_traffic.py GUEST CONNECTIONS`).

Opens CONNECTIONS TCP connections to the guest's echo port 7 at once (each
its own source port, so the tun driver's flow hash spreads them over the
tap's queues), sends each a different 3000-byte pattern and checks that the
same bytes come back; then reads the guest's `/api/queues` JSON. Prints one
JSON object on stdout: `{"echo": [[ok, bytes], ...], "queues": [{name,
completions, interrupts}, ...], "status_rows": ["0 rx", ...]}` (the queue
rows of the status page). Standard library only.
"""

from __future__ import annotations

import json
import re
import socket
import sys
import threading
import urllib.request

ECHO_PORT = 7
PATTERN_BYTES = 3000
TIMEOUT_S = 30.0


def pattern(connection: int) -> bytes:
    return bytes((connection * 7 + i) % 251 for i in range(PATTERN_BYTES))


def echo_once(guest: str, connection: int) -> tuple[bool, int]:
    data = pattern(connection)
    with socket.create_connection((guest, ECHO_PORT), timeout=TIMEOUT_S) as conn:
        conn.sendall(data)
        got = b""
        while len(got) < len(data):
            chunk = conn.recv(65536)
            if not chunk:
                break
            got += chunk
    return got == data, len(got)


def main() -> int:
    guest, connections = sys.argv[1], int(sys.argv[2])
    results: list[tuple[bool, int] | str] = ["not run"] * connections

    def one(i: int) -> None:
        try:
            results[i] = echo_once(guest, i)
        except OSError as err:
            results[i] = f"{type(err).__name__}: {err}"

    threads = [threading.Thread(target=one, args=(i,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with urllib.request.urlopen(f"http://{guest}/api/queues", timeout=TIMEOUT_S) as answer:
        view = json.load(answer)
    queues = [
        {"name": q["name"], "completions": q["completions"], "interrupts": q["interrupts"]}
        for device in view["devices"] if device["type"] == "net"
        for q in device.get("queues", [])
    ]
    with urllib.request.urlopen(f"http://{guest}/", timeout=TIMEOUT_S) as answer:
        page = answer.read().decode("utf-8", "replace")
    # The status page's queue rows: "<td>0 rx</td>", ..., "<td>8 ctrl</td>".
    rows = re.findall(r"<td>(\d+ (?:rx|tx|ctrl))</td>", page)
    print(json.dumps({"echo": results, "queues": queues, "status_rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
