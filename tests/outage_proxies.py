"""Forwarders that make network faults for outage tests: cut every connection, or drop chosen answers.

Both build on `mlflow_server.TcpForwarder` (listen on a port, forward to a target once started):

- `CuttingForwarder`: `stop()` refuses new connections *and* cuts the open ones, keep-alive included, so
  a client with pooled connections sees the outage too (a plain `TcpForwarder` keeps those alive).
- `AnswerDropper`: relays HTTP/1.1 requests, but for a request matching a rule cuts the connection
  instead of relaying the answer, after the server has done the work.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Any

from mlflow_server import TcpForwarder, _pipe


class CuttingForwarder(TcpForwarder):
    """A `TcpForwarder` whose `stop()` also cuts every connection it forwards (idle keep-alive ones too)."""

    def __init__(self, target: tuple[str, int], port: int | None = None) -> None:
        super().__init__(target, port)
        self._open: list[socket.socket] = []

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # stopped
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            self._open += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pipe, args=(source, sink), daemon=True).start()

    def stop(self) -> None:
        super().stop()
        for sock in self._open:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._open.clear()


class AnswerDropper(TcpForwarder):
    """A forwarder that relays HTTP requests but, once per rule, cuts the connection instead of relaying the answer.

    The server has done the work (created the run, stored the metrics); the client sees a broken
    connection: the one outage in which resending what failed could store it twice.

    Args:
        target (`tuple[str, int]`):
            The server.
        rules (`list[Callable[[bytes], bool]]`):
            Each matches a request (its bytes) whose answer is dropped, the first time only.
    """

    def __init__(self, target: tuple[str, int], rules: list[Any]) -> None:
        super().__init__(target)
        self.rules = list(rules)
        self.dropped: list[str] = []

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self.target)
        from_client = from_server = b""
        with client, upstream:
            while (request := _http_message(client, from_client)) is not None:
                message, from_client = request
                upstream.sendall(message)
                if (answer := _http_message(upstream, from_server)) is None:
                    return
                reply, from_server = answer
                rule = next((r for r in self.rules if r(message)), None)
                if rule is not None:
                    self.rules.remove(rule)
                    self.dropped.append(message.split(b"\r\n", 1)[0].decode())
                    return  # the server wrote; its answer never arrives
                client.sendall(reply)


def _http_message(sock: socket.socket, buffered: bytes) -> tuple[bytes, bytes] | None:
    """One HTTP/1.1 message (head and body) read from `sock` after `buffered`, and what followed it; `None` at EOF."""
    data = buffered
    while b"\r\n\r\n" not in data:
        if not (chunk := sock.recv(65536)):
            return None
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    fields = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip().lower()
    if b"chunked" in fields.get(b"transfer-encoding", b""):
        while b"\r\n0\r\n\r\n" not in b"\r\n" + rest:
            if not (chunk := sock.recv(65536)):
                return None
            rest += chunk
        end = (b"\r\n" + rest).index(b"\r\n0\r\n\r\n") + 5
    else:
        end = int(fields.get(b"content-length", b"0"))
        while len(rest) < end:
            if not (chunk := sock.recv(65536)):
                return None
            rest += chunk
    return head + b"\r\n\r\n" + rest[:end], rest[end:]
