"""Static files of the console: its own CSS, JS and icon, and the installed plotly.min.js.

plotly.min.js is read from the `plotly` package's `package_data` (never a CDN, never a
copy in this repository) and, like every asset, linked with a `?v=` version so browsers
may keep it for a year. It is 4.6 MB; gzip brings it to about a third, compressed once,
on the first request that accepts it, and kept.
"""

import asyncio
import gzip
import hashlib
import importlib.resources
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response

from spendgate.errors import NotFound

LONG_CACHE = "public, max-age=31536000, immutable"
_STATIC = Path(__file__).parent / "static"
_OWN = {
    "console.css": "text/css; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}


@dataclass
class StaticAsset:
    """One file served under /ui/static/, with the version its links carry."""

    path: Path
    media_type: str
    version: str
    _gzipped: bytes | None = field(default=None, init=False, repr=False)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False, repr=False)

    async def response(self, request: Request) -> Response:
        """The file, gzipped when the client accepts it, with the long cache header."""
        headers = {"cache-control": LONG_CACHE, "vary": "accept-encoding"}
        if "gzip" not in request.headers.get("accept-encoding", "").lower():
            return FileResponse(self.path, media_type=self.media_type, headers=headers)
        async with self._lock:  # compress once, however many first requests arrive together
            if self._gzipped is None:
                self._gzipped = await asyncio.to_thread(_gzip_file, self.path)
        headers["content-encoding"] = "gzip"
        return Response(self._gzipped, media_type=self.media_type, headers=headers)


def _gzip_file(path: Path) -> bytes:
    return gzip.compress(path.read_bytes(), compresslevel=6, mtime=0)


def plotly_js_path() -> Path:
    """The installed plotly package's plotly.min.js."""
    return Path(str(importlib.resources.files("plotly") / "package_data" / "plotly.min.js"))


class Assets:
    """The console's static files by name, and their versioned URLs."""

    def __init__(self) -> None:
        self._files = {
            name: StaticAsset(_STATIC / name, media_type, _content_version(_STATIC / name))
            for name, media_type in _OWN.items()
        }
        self._files["plotly.min.js"] = StaticAsset(
            plotly_js_path(), "text/javascript; charset=utf-8", version("plotly")
        )

    def url(self, name: str) -> str:
        """The versioned URL of asset `name`."""
        return f"/ui/static/{name}?v={self._files[name].version}"

    def get(self, name: str) -> StaticAsset:
        """The asset called `name`, or `NotFound`."""
        asset = self._files.get(name)
        if asset is None:
            raise NotFound("No such file.")
        return asset


def _content_version(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]
