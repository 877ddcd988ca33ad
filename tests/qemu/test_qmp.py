"""Unit tests of the QMP client (tests/qemu/qmp.py) against a fake QEMU.

The fake speaks the protocol's shape: a greeting, `qmp_capabilities`, and
scripted answers. The tests prove that a command's `return` comes back (with
arguments whose names are not Python identifiers, like `block_resize`'s
`node-name`), that events in between are skipped, that an `error` raises, and
that a peer that is not QMP, falls silent or is absent is an error rather
than a hang.
"""

from __future__ import annotations

import json
import socket
import tempfile
import threading
import unittest
from pathlib import Path

from .qmp import Qmp, QmpError, qmp_args

GREETING = {"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}}, "capabilities": []}}


class FakeQemu:
    """A Unix socket server that sends `greeting`, then for each request
    received sends the next list of messages from `script`."""

    def __init__(self, path: Path, greeting: dict, script: list[list[dict]]) -> None:
        self.requests: list[dict] = []
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(1)
        self.thread = threading.Thread(target=self.serve, args=(greeting, script), daemon=True)
        self.thread.start()

    def serve(self, greeting: dict, script: list[list[dict]]) -> None:
        conn, _ = self.server.accept()
        with conn:
            conn.sendall(json.dumps(greeting).encode() + b"\r\n")
            buffer = b""
            for answers in script:
                while b"\n" not in buffer:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    buffer += chunk
                line, buffer = buffer.split(b"\n", 1)
                self.requests.append(json.loads(line))
                for message in answers:
                    conn.sendall(json.dumps(message).encode() + b"\r\n")
            conn.recv(4096)

    def close(self) -> None:
        self.server.close()


class QmpTest(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = tempfile.TemporaryDirectory()
        self.path = Path(self.dir.name) / "qmp.sock"

    def tearDown(self) -> None:
        self.dir.cleanup()

    def test_commands_return_their_value_and_events_are_skipped(self):
        event = {"event": "BLOCK_JOB_READY", "data": {}, "timestamp": {"seconds": 1, "microseconds": 2}}
        fake = FakeQemu(self.path, GREETING, [[{"return": {}}], [event, {"return": {"ok": 1}}]])
        qmp = Qmp(self.path)
        try:
            self.assertEqual(qmp.execute("block_resize", **{"node-name": "disk0", "size": 4096}), {"ok": 1})
        finally:
            qmp.close()
        fake.thread.join(timeout=5)
        fake.close()
        self.assertEqual(fake.requests, [
            {"execute": "qmp_capabilities"},
            {"execute": "block_resize", "arguments": {"node-name": "disk0", "size": 4096}},
        ])

    def test_an_error_answer_raises(self):
        error = {"error": {"class": "GenericError", "desc": "Cannot find device='nope' nor node-name='nope'"}}
        fake = FakeQemu(self.path, GREETING, [[{"return": {}}], [error]])
        qmp = Qmp(self.path)
        try:
            with self.assertRaisesRegex(QmpError, "block_resize: Cannot find"):
                qmp.execute("block_resize", **{"node-name": "nope", "size": 1})
        finally:
            qmp.close()
        fake.close()

    def test_a_peer_that_is_not_qmp_or_falls_silent_is_an_error(self):
        fake = FakeQemu(self.path, {"hello": "world"}, [])
        with self.assertRaisesRegex(QmpError, "not a QMP greeting"):
            Qmp(self.path)
        fake.close()
        silent = Path(self.dir.name) / "silent.sock"
        fake = FakeQemu(silent, GREETING, [[]])
        with self.assertRaises(OSError):
            Qmp(silent, timeout_s=0.5)
        fake.close()

    def test_no_socket_is_an_error_not_a_hang(self):
        with self.assertRaises(OSError):
            Qmp(Path(self.dir.name) / "absent.sock", timeout_s=0.2)

    def test_qmp_args(self):
        self.assertEqual(qmp_args("/tmp/q.sock"), ["-qmp", "unix:/tmp/q.sock,server=on,wait=off"])


if __name__ == "__main__":
    unittest.main()
