"""The viewer's local HTTP server (standard library only): the page and its assets from ``static/``, and the
scene from a :class:`~lift3d_core.viewer.scene.ViewerScene`.

Routes (all GET)::

    /                        static/index.html
    /static/<name>           a file of static/ (the set is fixed at start: no path from the request is opened)
    /api/scene.json          ViewerScene.metadata()
    /api/gaussians.bin       the canonical Gaussians (viewer.splats wire format)
    /api/frame/<i>.jpg       camera i's generated frame
    /api/field/<i>.bin       the Gaussians moved by the distortion field at camera i's frame code

Every asset is served from here: the page's Content-Security-Policy allows this origin only, so a page that
tried to load anything from elsewhere would be refused by the browser.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from lift3d_core.errors import Lift3DError
from lift3d_core.viewer.scene import ViewerScene

STATIC_DIR = Path(__file__).with_name("static")
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'none'")
_INDEXED = re.compile(r"^/api/(frame|field)/(\d{1,6})\.(jpg|bin)$")


def _static_files() -> dict[str, Path]:
    return {p.name: p for p in STATIC_DIR.iterdir() if p.is_file() and p.suffix in _TYPES}


class ViewerServer(ThreadingHTTPServer):
    """Serves ``scene``; ``url`` is where the page is. ``serve_forever`` / ``shutdown`` as any socketserver."""

    daemon_threads = True

    def __init__(self, scene: ViewerScene, host: str = "127.0.0.1", port: int = 0):
        self.scene = scene
        self.static = _static_files()
        self.metadata = json.dumps(scene.metadata()).encode()
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            super().__init__((host, port), _Handler)
        except OSError as exc:
            raise Lift3DError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port") from exc

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"

    def start_background(self) -> threading.Thread:
        """Serve from a daemon thread (tests, notebooks); ``shutdown()`` stops it."""
        thread = threading.Thread(target=self.serve_forever, name="lift3d-viewer", daemon=True)
        thread.start()
        return thread


class _Handler(BaseHTTPRequestHandler):
    server: ViewerServer
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        scene = self.server.scene
        try:
            if path in ("/", "/index.html"):
                self._file("index.html")
            elif path.startswith("/static/") and path[len("/static/"):] in self.server.static:
                self._file(path[len("/static/"):])
            elif path == "/api/scene.json":
                self._send(self.server.metadata, "application/json")
            elif path == "/api/gaussians.bin":
                self._send(scene.packed(), "application/octet-stream")
            elif m := _INDEXED.match(path):
                kind, index, ext = m.group(1), int(m.group(2)), m.group(3)
                if (kind, ext) == ("frame", "jpg"):
                    self._send(scene.frame_jpeg(index), "image/jpeg")
                elif (kind, ext) == ("field", "bin"):
                    self._send(scene.field_packed(index), "application/octet-stream")
                else:
                    self._error(HTTPStatus.NOT_FOUND, f"no {path}")
            else:
                self._error(HTTPStatus.NOT_FOUND, f"no {path}")
        except Lift3DError as exc:
            self._error(HTTPStatus.NOT_FOUND, str(exc))

    def _file(self, name: str) -> None:
        p = self.server.static[name]
        self._send(p.read_bytes(), _TYPES[p.suffix])

    def _send(self, body: bytes, content_type: str, status: HTTPStatus = HTTPStatus.OK) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("Cache-Control", "no-store")  # a run's scene changes under the same URL when re-lifted
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: HTTPStatus, message: str) -> None:
        self._send(message.encode(), "text/plain; charset=utf-8", status)

    def log_message(self, format, *args):  # the terminal shows the URL and errors, not every request
        pass
