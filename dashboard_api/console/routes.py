"""Routes of the console's files: `/` (the console), `/resident` (the residents' page),
`/docs` (Swagger UI), their scripts and
styles under /console/static/, and an allow-list of files from the pinned npm packages
under /console/vendor/. Answers carry a strict Content-Security-Policy: scripts only from
this origin, no frames, no other hosts.
"""

from __future__ import annotations

import html
import json
import mimetypes
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse, Response

from dashboard_api.deps import State
from dashboard_api.errors import NotFound, problem

router = APIRouter(include_in_schema=False)

STATIC = Path(__file__).parent / "static"
NODE_MODULES = Path(__file__).resolve().parents[2] / "node_modules"
VENDOR = {
    "swagger-ui.css": "swagger-ui-dist/swagger-ui.css",
    "swagger-ui-bundle.js": "swagger-ui-dist/swagger-ui-bundle.js",
    "uPlot.min.css": "uplot/dist/uPlot.min.css",
    "uPlot.iife.min.js": "uplot/dist/uPlot.iife.min.js",
}
"""The only files served from node_modules: name in the URL -> path in node_modules."""

PREFIX = "/console/"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline';"
    " img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none';"
    " form-action 'self'"
)
_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
# dots inside a name (uPlot.iife.min.js), never first: no "..", no slash, no hidden file
FileName = Annotated[
    str, PathParam(pattern=r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}\.(js|css|svg|png)$")
]


def _page(name: str, state: State) -> HTMLResponse:
    text = (STATIC / name).read_text(encoding="utf-8")
    config = {
        "timeZone": state.settings.api.time_zone,
        "language": state.settings.api.console_language,
    }
    text = text.replace("{{config}}", html.escape(json.dumps(config), quote=True))
    return HTMLResponse(text, headers={**_HEADERS, "Cache-Control": "no-cache"})


@router.get("/")
async def console(state: State) -> HTMLResponse:
    return _page("index.html", state)


@router.get("/resident")
async def resident(state: State) -> HTMLResponse:
    """The residents' page (phone-first): no operator sign-in, its own entry."""
    return _page("resident.html", state)


@router.get("/docs")
async def docs(state: State) -> HTMLResponse:
    return _page("docs.html", state)


@router.get("/console/static/{name}")
async def static(name: FileName) -> FileResponse:
    path = STATIC / name
    if not path.is_file():
        raise NotFound(f"no console file {name}")
    return FileResponse(path, media_type=mimetypes.guess_type(name)[0], headers=_HEADERS)


@router.get("/console/vendor/{name}", response_model=None)
async def vendor(name: FileName) -> Response:
    rel = VENDOR.get(name)
    if rel is None:
        raise NotFound(f"no vendored file {name}")
    path = NODE_MODULES / rel
    if not path.is_file():
        return problem(
            503,
            f"front-end package file {rel} is not installed: run scripts/bootstrap.sh"
            " (npm ci installs the pinned packages into node_modules)",
        )
    return FileResponse(
        path,
        media_type=mimetypes.guess_type(name)[0],
        headers={**_HEADERS, "Cache-Control": "public, max-age=86400"},
    )
