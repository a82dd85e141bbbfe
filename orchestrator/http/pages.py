"""The web pages: our own client, and an operator's folder of pages (`--web-dir`).

- Our client: `GET /client/` always, and `GET /` unless `--web-dir` is given; its files at
  `/static/{name}` (one flat folder).
- `--web-dir DIR` (e.g. LiveTalking's `web/` folder): `DIR/index.html` at `/`, every other file
  at its path under `/`, same origin as the API, so pages that call `/human` or `./offer` work
  unchanged. A path is served only when each of its segments is a plain name (`NAME`: no
  leading dot, so no `..` and no hidden files), the file it resolves to (symlinks followed)
  lies inside DIR, and it is a regular file; anything else is a 404 that names no directory.
  A path ending in `/` serves that folder's index.html.

Every page route is open without the token (access.PAGE_PATHS): pages hold no secret and must
load to call the API, which still asks for it.
"""

from __future__ import annotations

import re
from pathlib import Path

from aiohttp import web

from ..errors import ApiError

CLIENT_DIR = Path(__file__).parent.parent / "static"
INDEX = "index.html"
# aiohttp's own static handler lets OSError (e.g. a 5,000-character name) through as a 500:
# names are checked before any file system call.
NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")
MAX_PATH_SEGMENTS = 16
WEB_DIR_ROUTE = "/{path:.+}"
WEB_DIR_CANONICAL = "/{path}"  # how aiohttp names that route's resource
CLIENT_PATH = "/client/"


def client_routes(routes: web.RouteTableDef, web_dir: Path | None) -> None:
    """Our client at /client/ (and at / without a web dir) and its /static files."""

    async def client_page(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(CLIENT_DIR / INDEX)

    async def client_file(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if not NAME.fullmatch(name) or not (CLIENT_DIR / name).is_file():
            raise ApiError.not_found(f"no static file {name[:80]!r}")
        return web.FileResponse(CLIENT_DIR / name)

    async def client_redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPMovedPermanently(CLIENT_PATH)  # its files are relative to the folder

    routes.get(CLIENT_PATH)(client_page)
    routes.get(CLIENT_PATH.rstrip("/"))(client_redirect)
    routes.get("/static/{name}")(client_file)
    if web_dir is None:
        routes.get("/")(client_page)


class WebDir:
    """A folder of static pages served at `/`."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        if not self.root.is_dir():
            raise ValueError(f"--web-dir {root}: not a directory")

    def file_for(self, path: str) -> Path:
        """The file a URL path (without its leading '/') names; 404 when it names none."""
        segments = path.split("/")
        if segments[-1] == "":
            segments[-1] = INDEX
        if len(segments) > MAX_PATH_SEGMENTS or not all(NAME.fullmatch(s) for s in segments):
            raise ApiError.not_found(f"no page {path[:80]!r}")
        try:
            resolved = self.root.joinpath(*segments).resolve()
            inside = resolved.is_relative_to(self.root) and resolved.is_file()
        except OSError:  # e.g. a symlink loop
            inside = False
        if not inside:
            raise ApiError.not_found(f"no page {path[:80]!r}")
        return resolved

    def add_routes(self, app: web.Application) -> None:
        """`/` and the catch-all; after every other route, so the API's paths win."""

        async def index(request: web.Request) -> web.StreamResponse:
            return web.FileResponse(self.file_for(""))

        async def page(request: web.Request) -> web.StreamResponse:
            return web.FileResponse(self.file_for(request.match_info["path"]))

        app.router.add_get("/", index)
        app.router.add_get(WEB_DIR_ROUTE, page)
