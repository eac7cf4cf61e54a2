"""The dashboard: server-rendered pages at / and /ui/..., refreshed live by a little JavaScript.

Every page and JSON endpoint resolves the caller's project with the API's own
`current_project`. A browser cannot add an Authorization header to a link, so
the login form keeps the API key in an HttpOnly, SameSite=Strict cookie and
the dashboard's routes (only they) present it to `current_project` as a
bearer key. With no keys configured, loopback callers need no login at all.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from overnight import metrics
from overnight.api.auth import current_project
from overnight.api.files import stream_file
from overnight.api.limits import plausible_id
from overnight.backends.base import ENDPOINTS
from overnight.errors import NotFound, OvernightError
from overnight.models import Batch, BatchStatus
from overnight.services import Services
from overnight.web import forward, views

HERE = Path(__file__).parent
COOKIE = "overnight_key"
STATIC = {"app.css": "text/css", "app.js": "text/javascript", "favicon.svg": "image/svg+xml"}
PAGE_SIZE = 50
FAILED_SAMPLE = 20
FILE_BATCHES = 500  # batches named on one page of files, at most

templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters.update(
    duration=views.fmt_duration,
    size=views.fmt_bytes,
    when=views.fmt_time,
    number=views.fmt_number,
    cost=views.fmt_cost,
)

router = APIRouter(include_in_schema=False)


def _as_bearer(request: Request, key: str | None = None) -> Request:
    """The request as `current_project` should see it: with the cookie's key as a bearer key."""
    key = key if key is not None else request.cookies.get(COOKIE)
    if not key or "authorization" in request.headers or "api-key" in request.headers:
        return request
    try:
        value = f"Bearer {key}".encode("latin-1")
    except UnicodeEncodeError:
        return request
    headers = [*request.scope["headers"], (b"authorization", value)]
    return Request({**request.scope, "headers": headers}, request.receive)


async def ui_project(request: Request) -> str:
    """The caller's project, or the API's 401 error (JSON endpoints, partials, downloads)."""
    return await current_project(_as_bearer(request))


async def page_project(request: Request) -> str | None:
    """The caller's project, or None when a full page should send them to the login form."""
    try:
        return await ui_project(request)
    except OvernightError as exc:
        if exc.status_code == 401:
            return None
        raise


Project = Annotated[str, Depends(ui_project)]
PageProject = Annotated[str | None, Depends(page_project)]


def _svc(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


def _history(request: Request) -> views.ProgressHistory:
    history = getattr(request.app.state, "progress_history", None)
    if history is None:
        history = request.app.state.progress_history = views.ProgressHistory()
    return history


def _to_login(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/ui/login?next={quote(target)}", status_code=303)


def _safe_next(value: str | None) -> str:
    """Only paths on this server: never an open redirect."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def _render(request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
    context.setdefault("signed_in", COOKIE in request.cookies)
    return templates.TemplateResponse(request, name, context, status_code=status_code)


# --- data -------------------------------------------------------------------------------


def _recent_counts(request: Request) -> views.RecentCounts:
    counts = getattr(request.app.state, "recent_counts", None)
    if counts is None:
        counts = request.app.state.recent_counts = views.RecentCounts()
    return counts


async def _view(request: Request, b: Batch, t: float) -> dict[str, Any]:
    """The batch as the pages show it, its current throughput counted in the ledger."""
    svc = _svc(request)
    _history(request).record(b, t)
    if b.status != BatchStatus.IN_PROGRESS:
        return views.batch_view(b, svc.settings.prices, None, t)
    counts = _recent_counts(request)
    hit = counts.get(b.id, t)
    if hit is None:
        hit = (t, await svc.store.ledger.finished_since(b.seq, t - views.RATE_WINDOW))
        counts.put(b.id, *hit)
    counted_at, recent = hit
    return views.batch_view(b, svc.settings.prices, recent, counted_at)


async def _list(request: Request, project: str, after: str | None) -> dict[str, Any]:
    svc = _svc(request)
    items, more = await svc.store.batches.page(project, limit=PAGE_SIZE, after=after)
    t = time.time()
    rows = [await _view(request, b, t) for b in items]
    running = [r for r in rows if r["status"] == "in_progress"]
    summary = {
        "shown": len(rows),
        "open": sum(1 for r in rows if not r["terminal"]),
        "running": len(running),
        "rate": round(sum(r["rate"] or 0.0 for r in running), 2),
        "pending": sum(r["total"] - r["done"] for r in running),
        "tokens": sum(r["total_tokens"] for r in rows),
        "failed_requests": sum(r["failed"] for r in rows),
    }
    return {
        "object": "list",
        "data": rows,
        "summary": summary,
        "has_more": more,
        "last_id": rows[-1]["id"] if rows else None,
        "after": after,
    }


async def _detail(request: Request, project: str, batch_id: str) -> tuple[Batch, dict[str, Any]]:
    svc = _svc(request)
    b = await svc.store.batches.get(batch_id, project) if plausible_id(batch_id) else None
    if b is None:
        raise NotFound(f"No such Batch object: {batch_id[:100]}", param="batch_id")
    history, t = _history(request), time.time()
    span = views.curve_span(b, t)
    if span is not None and not history.seeded(b.id):
        # Once per batch and process: the chart's past, from the ledger's finish times.
        counts = await svc.store.ledger.finished_curve(b.seq, *span)
        history.seed(b.id, views.curve_points(span[0], span[1], counts, t) if any(counts) else [])
    view = await _view(request, b, t)
    sample = await svc.store.ledger.failed_sample(b.seq, FAILED_SAMPLE) if b.failed else []
    view["failed_sample"] = [views.failed_view(r) for r in sample]
    points = views.progress_points(b, history)
    view["progress"] = [{"t": round(t, 3), "done": d} for t, d in points]
    view["chart"] = views.chart(points, b.total)
    files = {}
    for kind in ("input_file_id", "output_file_id", "error_file_id"):
        file_id = getattr(b, kind)
        f = await svc.store.files.get(file_id, project) if file_id else None
        if f is not None:
            files[kind.removesuffix("_file_id")] = {
                "id": f.id,
                "filename": f.filename,
                "bytes": f.bytes,
                "url": f"/ui/files/{f.id}/content",
            }
    view["files"] = files
    return b, view


# --- pages --------------------------------------------------------------------------------


@router.get("/")
async def dashboard(
    request: Request,
    project: PageProject,
    after: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    if project is None:
        return _to_login(request)
    listing = await _list(request, project, after)
    return _render(
        request,
        "dashboard.html",
        project=project,
        listing=listing,
        page="batches",
        endpoints=ENDPOINTS,
        windows=_svc(request).settings.completion_windows,
    )


@router.get("/ui/batches/{batch_id}")
async def batch_page(request: Request, batch_id: str, project: PageProject) -> Response:
    if project is None:
        return _to_login(request)
    try:
        _b, view = await _detail(request, project, batch_id)
    except NotFound:
        return _render(
            request, "missing.html", 404, project=project, what=batch_id[:100], page="batches"
        )
    return _render(request, "batch.html", project=project, b=view, page="batches")


@router.get("/ui/files")
async def files_page(
    request: Request,
    project: PageProject,
    after: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    if project is None:
        return _to_login(request)
    store = _svc(request).store
    items, more = await store.files.page(
        project, purpose=None, limit=100, order="desc", after=after
    )
    return _render(
        request,
        "files.html",
        project=project,
        files=items,
        batches=await _batches_of(request, project, [f.id for f in items]),
        has_more=more,
        page="files",
    )


async def _batches_of(
    request: Request, project: str, file_ids: list[str]
) -> dict[str, list[tuple[str, str]]]:
    """file id -> [(batch id, what the file is to it)], newest batch first."""
    found: dict[str, list[tuple[str, str]]] = {}
    wanted = set(file_ids)
    for b in await _svc(request).store.batches.using_files(project, file_ids, FILE_BATCHES):
        for role, file_id in (
            ("input", b.input_file_id),
            ("output", b.output_file_id),
            ("errors", b.error_file_id),
        ):
            if file_id in wanted:
                found.setdefault(file_id, []).append((b.id, role))
    return found


@router.get("/ui/login")
async def login_form(request: Request, next: str | None = None) -> Response:
    return _render(request, "login.html", next=_safe_next(next), error=None, page="login")


@router.post("/ui/login")
async def login(request: Request) -> Response:
    form = await request.form()
    key = str(form.get("key") or "").strip()
    target = _safe_next(str(form.get("next") or "/"))
    try:
        if not key:
            raise OvernightError("Enter an API key.", status_code=401)
        await current_project(_as_bearer(request, key))
    except OvernightError as exc:
        if exc.status_code != 401:
            raise
        return _render(request, "login.html", 401, next=target, error=exc.message, page="login")
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE,
        key,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


@router.post("/ui/logout")
async def logout() -> Response:
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


# --- live parts, JSON and downloads ---------------------------------------------------------


@router.get("/ui/partials/batches")
async def batches_partial(
    request: Request,
    project: Project,
    after: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    listing = await _list(request, project, after)
    return _render(request, "_batches.html", listing=listing)


@router.get("/ui/partials/batches/{batch_id}")
async def batch_partial(request: Request, batch_id: str, project: Project) -> Response:
    _b, view = await _detail(request, project, batch_id)
    return _render(request, "_batch.html", b=view)


@router.get("/ui/api/batches")
async def batches_json(
    request: Request,
    project: Project,
    after: Annotated[str | None, Query(max_length=64)] = None,
) -> dict[str, Any]:
    return await _list(request, project, after)


@router.get("/ui/api/batches/{batch_id}")
async def batch_json(request: Request, batch_id: str, project: Project) -> dict[str, Any]:
    _b, view = await _detail(request, project, batch_id)
    view.pop("chart")
    return view


@router.api_route(forward.PREFIX + "/{path:path}", methods=["GET", "POST", "DELETE"])
async def action(request: Request, path: str) -> Response:
    """Cancel, retry, upload, create, delete: the API's own routes, with the login's key."""
    return forward.forward(request.scope, request.method, "/" + path, request.cookies.get(COOKIE))


@router.get("/ui/files/{file_id}/content")
async def download(request: Request, file_id: str, project: Project) -> Response:
    return await stream_file(_svc(request), file_id, project)


@router.get("/ui/static/{name}")
async def static(name: str) -> Response:
    if name not in STATIC:
        raise NotFound("No such file.")
    return FileResponse(
        HERE / "static" / name,
        media_type=STATIC[name],
        headers={"cache-control": "public, max-age=300"},
    )


@router.get("/metrics")
async def prometheus(request: Request) -> Response:
    """Prometheus metrics of this process and of the store; no key needed (no project data)."""
    body, content_type = await metrics.render(request.app)
    return Response(body, media_type=content_type)
