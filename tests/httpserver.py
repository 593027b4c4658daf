"""A loopback HTTP file server for the tests: directory listings (for globs) and byte ranges.

uproot reads http(s) URLs through fsspec, which fetches byte ranges (`Range: bytes=a-b`) and
refuses a server that answers them with the whole file, as http.server's own handler does.
The server counts the bytes it sends, so a test can tell metadata reads from data reads.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import threading
from pathlib import Path

RANGE = re.compile(r"bytes=(\d+)-(\d*)")


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """SimpleHTTPRequestHandler plus single byte ranges (206 Partial Content)."""

    def log_message(self, format, *args) -> None:  # keep the test output clean
        pass

    def send_head(self):
        self.range_length = None
        match = RANGE.fullmatch(self.headers.get("Range", "").strip())
        path = self.translate_path(self.path)
        if match is None or not os.path.isfile(path):
            return super().send_head()
        size = os.path.getsize(path)
        start = int(match.group(1))
        stop = min(int(match.group(2)) + 1 if match.group(2) else size, size)
        file = open(path, "rb")
        file.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{size}")
        self.send_header("Content-Length", str(stop - start))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self.range_length = stop - start
        return file

    def copyfile(self, source, outputfile) -> None:
        data = source.read() if self.range_length is None else source.read(self.range_length)
        outputfile.write(data)
        self.server.bytes_sent += len(data)


class FileServer:
    """Serves `root` on 127.0.0.1 at a free port from a daemon thread; `url` is its base URL."""

    def __init__(self, root: Path):
        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(RangeHandler, directory=str(root))
        )
        self.httpd.bytes_sent = 0
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def bytes_sent(self) -> int:
        return self.httpd.bytes_sent

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
