"""Real servers for the probe tests, run as child processes: ``python probe_servers.py KIND ...``.

``http CODE_FILE``: an HTTP/1.1 server on 127.0.0.1 answering every GET with
the status code written in CODE_FILE (200 when the file is missing).
``tcp``: a listener that accepts and closes.  Both print their port on the
first line of stdout, then serve until killed.
"""

from __future__ import annotations

import http.server
import socket
import sys
from pathlib import Path


class Handler(http.server.BaseHTTPRequestHandler):
    code_file: Path

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        try:
            code = int(self.code_file.read_text().strip())
        except (OSError, ValueError):
            code = 200
        body = f"{code}\n".encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def main() -> None:
    kind = sys.argv[1]
    if kind == "http":
        Handler.code_file = Path(sys.argv[2])
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        print(server.server_address[1], flush=True)
        server.serve_forever()
    elif kind == "tcp":
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        print(listener.getsockname()[1], flush=True)
        while True:
            conn, _ = listener.accept()
            conn.close()


if __name__ == "__main__":
    main()
