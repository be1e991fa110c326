"""A TCP proxy in front of a real PostgreSQL server that can lose the reply to a ``COMMIT``.

The fault it makes is the one a network can make and a test cannot get from the server
alone: the server commits, and the connection drops before its reply reaches the client, so
the client cannot tell whether the transaction committed. :meth:`Proxy.lose_next_commit`
arms it: the server's replies are read message by message (type byte, 4-byte length), and the
first ``CommandComplete`` whose tag is ``COMMIT`` closes both sockets instead of being passed
on. :meth:`Proxy.drop_next_request` makes the other case: the request (with its ``COMMIT``)
never reaches the server, and the client cannot tell that either. Clients must not negotiate
TLS or GSS encryption (``sslmode=disable&gssencmode=disable``, added by :meth:`Proxy.url`),
so every server message is framed.
"""

from __future__ import annotations

import socket
import struct
import threading
from urllib.parse import urlsplit, urlunsplit

__all__ = ["Proxy"]


class Proxy:
    """Forwards 127.0.0.1:<port> to the server of ``url``; one pair of threads per client."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self._url = parts
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = self._listener.getsockname()[1]
        # armed faults: the client port they are for (None: any connection), and for a
        # dropped request how many requests of that connection pass first
        self._lose: tuple[int | None] | None = None
        self._drop: tuple[int | None, int] | None = None
        self.lost = 0
        """How many ``COMMIT`` replies (or requests) were lost."""
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self) -> str:
        """The server's URL through this proxy (the same database and user)."""
        parts = self._url
        netloc = f"{parts.username}@127.0.0.1:{self.port}" if parts.username else (
            f"127.0.0.1:{self.port}"
        )  # fmt: skip
        query = "&".join(q for q in (parts.query, "sslmode=disable&gssencmode=disable") if q)
        return urlunsplit((parts.scheme, netloc, parts.path, query, ""))

    def lose_next_commit(self, *, on: int | None = None) -> None:
        """The next ``COMMIT`` the server confirms on the connection whose client port is
        ``on`` (any connection: None) is not confirmed to the client: the connection is closed
        instead."""
        with self._lock:
            self._lose = (on,)

    def drop_next_request(self, *, on: int | None = None, after: int = 0) -> None:
        """The next request the client on port ``on`` (any: None) sends, after ``after``
        more, never reaches the server: the connection is closed instead (the server rolls
        back what it had begun). A request is what one ``recv`` brings (libpq sends a
        pipeline at once)."""
        with self._lock:
            self._drop = (on, after)

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            for sock in self._open:
                _close(sock)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._target)
            with self._lock:
                self._open += [client, server]
            port = client.getpeername()[1]
            args = (client, server, port)
            threading.Thread(target=self._upstream, args=args, daemon=True).start()
            threading.Thread(target=self._downstream, args=args, daemon=True).start()

    def _upstream(self, client: socket.socket, server: socket.socket, port: int) -> None:
        try:
            while data := client.recv(65536):
                with self._lock:
                    drop = self._drop
                    if drop is not None and drop[0] in (None, port):
                        if drop[1]:
                            self._drop = (drop[0], drop[1] - 1)
                        else:
                            self._drop = None
                            self.lost += 1
                            break
                server.sendall(data)
        except OSError:
            pass
        _close(server)
        _close(client)

    def _downstream(self, client: socket.socket, server: socket.socket, port: int) -> None:
        buffer = b""
        try:
            while data := server.recv(65536):
                buffer += data
                out = b""
                while len(buffer) >= 5:  # whole messages only: type, length, body
                    (length,) = struct.unpack("!I", buffer[1:5])
                    if len(buffer) < 1 + length:
                        break
                    message, buffer = buffer[: 1 + length], buffer[1 + length :]
                    if message[:1] == b"C" and message[5:].rstrip(b"\x00") == b"COMMIT":
                        with self._lock:
                            lose = self._lose is not None and self._lose[0] in (None, port)
                            if lose:
                                self._lose = None
                                self.lost += 1
                        if lose:
                            raise OSError("the reply to COMMIT is lost")
                    out += message
                if out:
                    client.sendall(out)
        except OSError:
            pass
        _close(client)
        _close(server)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
