"""GET /: the demo page, static HTML, CSS and JavaScript shipped in the package that call the public API."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parents[1] / "static"
STATIC_URL = "/static"

router = APIRouter(include_in_schema=False)


@router.get("/")
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html")


def assets() -> StaticFiles:
    """The page's scripts and styles, mounted at STATIC_URL: served by the app itself, so the page works offline."""
    return StaticFiles(directory=STATIC)
