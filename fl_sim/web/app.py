"""`fl-sim serve`'s application (Starlette + Jinja2): read-only pages over the run stores, each with a JSON twin."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jinja2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from fl_sim.core.fmt import format_ci, number
from fl_sim.core.scoring import EVALUATORS
from fl_sim.core.store import StoreError
from fl_sim.web import charts
from fl_sim.web.compare import compare_page
from fl_sim.web.views import (NotFound, attack_image, context, figure, opened, photo_png, progress, run_page,
                              runs_index, user_page)

HERE = Path(__file__).parent
# The static files, read once at start by name: nothing else is ever served from disk under /static.
STATIC = {"app.css": "text/css", "app.js": "text/javascript"}
SAFE_METHODS = ("GET", "HEAD")
# Pages load only what this server sends: no CDN, no inline script.
HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self'; style-src 'self' 'unsafe-inline'; "
                                      "script-src 'self'; frame-ancestors 'none'",
           "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}


class ReadOnly:
    """Refuses every method but GET and HEAD (405) before any route runs, and adds the security headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] not in SAFE_METHODS:
            await PlainTextResponse("fl-sim serve is read-only: only GET and HEAD", status_code=405,
                                    headers={"Allow": ", ".join(SAFE_METHODS), **HEADERS})(scope, receive, send)
            return

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    (k.lower().encode(), v.encode()) for k, v in HEADERS.items() if k.lower().encode() not in names]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _when(ts: float | None) -> str:
    return "-" if not ts else time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * float(v):.0f} %"


def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(num=number, ci=format_ci, when=_when, pct=_pct, colour=charts.sim_colour,
                       points=lambda rows, key: [(r["round"], r[key]) for r in rows])
    env.globals.update(EVALUATORS=EVALUATORS, charts=charts)
    return env


def create_app(runs_dir: Path) -> Starlette:
    """The web view over ``runs_dir``: it opens stores read-only and never writes anything."""
    env = _env()
    static = {name: (HERE / "static" / name).read_bytes() for name in STATIC}

    def page(name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        return HTMLResponse(env.get_template(name).render(runs_dir=str(runs_dir), **ctx), status_code=status)

    def wants_json(request: Request) -> bool:
        return request.url.path.startswith("/api/")

    def not_found(request: Request, exc: Exception) -> Response:
        what = str(exc) if isinstance(exc, NotFound) else request.url.path
        if wants_json(request):
            return JSONResponse({"error": f"not found: {what}"}, status_code=404)
        return page("error.html", 404, title="Not found", message=f"Nothing here is called {what!r}.")

    def unreadable(request: Request, exc: Exception) -> Response:
        msg = str(exc)
        if wants_json(request):
            return JSONResponse({"error": msg, "status": "unreadable"}, status_code=500)
        return page("error.html", 500, title="This run's store cannot be read", message=msg)

    def runs_html(request: Request) -> Response:
        return page("runs.html", index=runs_index(runs_dir))

    def runs_json(request: Request) -> Response:
        return JSONResponse(runs_index(runs_dir))

    def run_html(request: Request) -> Response:
        doc = run_page(runs_dir, request.path_params["run_id"])
        return page("run.html", run=doc)

    def run_json(request: Request) -> Response:
        return JSONResponse(run_page(runs_dir, request.path_params["run_id"]))

    def grid_html(request: Request) -> Response:
        """The live parts of the run page (progress, utility, grid, strongest attacks), for its refresh."""
        doc = run_page(runs_dir, request.path_params["run_id"])
        return page("run_live.html", run=doc)

    def progress_json(request: Request) -> Response:
        with opened(runs_dir, request.path_params["run_id"]) as st:
            return JSONResponse(progress(st))

    def context_json(request: Request) -> Response:
        return JSONResponse(context(runs_dir, request.path_params["run_id"]))

    def user_html(request: Request) -> Response:
        p = request.path_params
        return page("user.html", user=user_page(runs_dir, p["run_id"], p["user"]))

    def user_json(request: Request) -> Response:
        p = request.path_params
        return JSONResponse(user_page(runs_dir, p["run_id"], p["user"]))

    def attack_png(request: Request) -> Response:
        p = request.path_params
        return FileResponse(attack_image(runs_dir, p["run_id"], p["attack_id"]), media_type="image/png")

    def photo(request: Request) -> Response:
        p = request.path_params
        return Response(photo_png(runs_dir, p["run_id"], p["user"], p["k"]), media_type="image/png")

    def figure_png(request: Request) -> Response:
        p = request.path_params
        return FileResponse(figure(runs_dir, p["name"], p["fig"]), media_type="image/png")

    def _compare(request: Request) -> dict[str, Any]:
        ids = [r for v in request.query_params.getlist("run") for r in v.split(",") if r]
        return compare_page(runs_dir, ids, request.query_params.get("folder") or None)

    def compare_html(request: Request) -> Response:
        return page("compare.html", cmp=_compare(request), index=runs_index(runs_dir))

    def compare_json(request: Request) -> Response:
        return JSONResponse(_compare(request))

    def static_file(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in static:
            raise NotFound(name)
        return Response(static[name], media_type=STATIC[name])

    routes = [
        Route("/", runs_html), Route("/api/runs", runs_json),
        Route("/runs/{run_id}", run_html), Route("/api/runs/{run_id}", run_json),
        Route("/runs/{run_id}/live", grid_html), Route("/api/runs/{run_id}/progress", progress_json),
        Route("/api/runs/{run_id}/context", context_json),
        Route("/runs/{run_id}/users/{user}", user_html), Route("/api/runs/{run_id}/users/{user}", user_json),
        Route("/runs/{run_id}/attacks/{attack_id:int}.png", attack_png),
        Route("/runs/{run_id}/users/{user}/photos/{k:int}.png", photo),
        Route("/runs/{name}/figures/{fig}", figure_png),
        Route("/compare", compare_html), Route("/api/compare", compare_json),
        Route("/static/{name}", static_file),
    ]
    app = Starlette(routes=routes, exception_handlers={NotFound: not_found, 404: not_found,
                                                       StoreError: unreadable})
    app.add_middleware(ReadOnly)
    return app
