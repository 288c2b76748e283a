"""The dashboard at /ui: one static page and its script, shipped in the package (no CDN).

Plain HTML, CSS and JavaScript with no build step and no third-party code: the page is a
client of the same /v1 API a script would use, with the key the user types in (kept in the
tab's session storage). Charts are SVG drawn by the script. The files hold no data, so they
are served without a key; everything they show comes from API calls that need one.
"""

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

UI_PATH = "/ui"
UI_ASSETS_PATH = "/ui/assets"
_STATIC = Path(__file__).resolve().parent / "static"
# Only the page's own files run; nothing may frame it (clickjacking) or load from elsewhere.
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def add_ui(app: FastAPI) -> None:
    app.mount(UI_ASSETS_PATH, StaticFiles(directory=_STATIC), name="ui-assets")

    @app.get(UI_PATH, include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(_STATIC / "index.html", headers=_SECURITY_HEADERS)

    @app.get(UI_PATH + "/", include_in_schema=False)
    def dashboard_slash() -> RedirectResponse:
        return RedirectResponse(UI_PATH)
