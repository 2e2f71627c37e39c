"""Job routes: queue a generation (JSON, or multipart with a bundle or a canvas and its files), follow it as
server-sent events, cancel it, and fetch its picture, bundle and canvas."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from ...canvas import Canvas, LayerImage, canvas_from_dict, load_bundle
from ..jobs import JobSettings
from ..responses import ApiError, first_error
from ..schemas import CanvasJobIn, SettingsIn
from ..services import Auth, Services, Svc

router = APIRouter()


@router.post("/api/jobs", status_code=202, tags=["jobs"])
async def create_job(_: Auth, svc: Svc, request: Request) -> dict[str, Any]:
    """Queue a generation. JSON body: {"canvas": {...image ids...}, "settings": {...}}; or multipart with
    `bundle` (.lcz), or `canvas` (JSON) plus `files` (the images it names), and optional `settings` (JSON).
    """
    kind = request.headers.get("content-type", "")
    if kind.startswith("application/json"):
        try:
            body = CanvasJobIn.model_validate(await request.json())
        except ValidationError as exc:
            raise ApiError(422, first_error(exc.errors())) from None
        except RecursionError:
            raise ApiError(400, "request: JSON nested too deeply") from None
        except ValueError:
            raise ApiError(400, "request: body is not valid JSON") from None
        canvas, job_settings = svc.canvases.from_json(body.canvas), body.settings
    elif kind.startswith("multipart/form-data"):
        canvas, job_settings = await _multipart_job(svc, request)
    else:
        raise ApiError(415, "send JSON or multipart/form-data")
    if job_settings.mode == "refine" and not svc.settings.refine_model:
        raise ApiError(400, "settings.mode: this server has no refine model (start it with --refine-model)")
    await run_in_threadpool(svc.canvases.check_size, canvas, job_settings.mode, job_settings.steps)
    job = svc.jobs.submit(canvas, JobSettings(**job_settings.model_dump()))
    return job.summary() | {"position": svc.jobs.queued()}


async def _multipart_job(svc: Services, request: Request) -> tuple[Canvas, SettingsIn]:
    form = await request.form(max_files=200, max_fields=50)
    raw_settings = form.get("settings")
    try:
        job_settings = SettingsIn.model_validate(json.loads(raw_settings) if isinstance(raw_settings, str)
                                                 else {})
    except ValidationError as exc:
        raise ApiError(422, "settings." + first_error(exc.errors())) from None
    except (ValueError, RecursionError):
        raise ApiError(400, "settings: not valid JSON") from None
    upload = form.get("bundle")
    if upload is not None and not isinstance(upload, str):
        return load_bundle(await svc.read_upload(upload, "bundle"), f"bundle {upload.filename!r}"), job_settings
    doc = form.get("canvas")
    if not isinstance(doc, str):
        raise ApiError(400, "multipart job: send a `bundle` file, or a `canvas` JSON field with `files`")
    try:
        parsed = json.loads(doc)
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"canvas: not valid JSON ({exc.msg})") from None
    except (ValueError, RecursionError):
        raise ApiError(400, "canvas: not valid JSON (nested too deeply, or a number too long)") from None
    files = {}
    for item in form.getlist("files"):
        if isinstance(item, str):
            continue
        files[item.filename or ""] = await svc.read_upload(item, f"file {item.filename!r}")

    def resolve(ref: str, where: str) -> LayerImage:
        if ref not in files:
            raise ApiError(400, f"{where}: no uploaded file of that name")
        return LayerImage.from_bytes(files[ref], where, source_name=ref)

    return canvas_from_dict(parsed, resolve, "canvas"), job_settings


@router.get("/api/jobs", tags=["jobs"])
def list_jobs(_: Auth, svc: Svc) -> list[dict[str, Any]]:
    """Every job, newest first (finished ones survive a restart)."""
    return svc.jobs.history()


@router.get("/api/jobs/{job_id}", tags=["jobs"])
def get_job(_: Auth, svc: Svc, job_id: str) -> dict[str, Any]:
    return svc.job_or_404(job_id).summary()


@router.post("/api/jobs/{job_id}/cancel", tags=["jobs"])
def cancel_job(_: Auth, svc: Svc, job_id: str) -> dict[str, Any]:
    svc.job_or_404(job_id)
    return svc.jobs.cancel(job_id).summary()


@router.get("/api/jobs/{job_id}/events", tags=["jobs"])
def job_events(_: Auth, svc: Svc, request: Request, job_id: str) -> StreamingResponse:
    """Server-sent events: queued, started, step (with a preview every few steps), done | failed | cancelled."""
    svc.job_or_404(job_id)
    last = request.headers.get("last-event-id", "")
    since = int(last) + 1 if last.isascii() and last.isdigit() and len(last) < 12 else 0

    async def stream() -> AsyncIterator[str]:
        # Async: an open stream holds no worker thread, and it ends when the server shuts down.
        yield "retry: 1000\n\n"
        async for item in svc.jobs.stream(job_id, since):
            if item is None:
                yield ": keep-alive\n\n"
                continue
            number, event = item
            yield f"id: {number}\nevent: {event['type']}\ndata: {json.dumps(event, ensure_ascii=True)}\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _finished(svc: Services, job_id: str) -> Any:
    job = svc.job_or_404(job_id)
    if job.status != "done":
        raise ApiError(409, f"job {job_id} is {job.status}, not done")
    return job


@router.get("/api/jobs/{job_id}/result.png", tags=["jobs"])
def job_result(_: Auth, svc: Svc, job_id: str) -> FileResponse:
    _finished(svc, job_id)
    return FileResponse(svc.jobs.result_path(job_id), media_type="image/png",
                        filename=f"layercomposer-{job_id}.png", content_disposition_type="inline")


@router.get("/api/jobs/{job_id}/canvas.lcz", tags=["jobs"])
def job_bundle(_: Auth, svc: Svc, job_id: str) -> FileResponse:
    _finished(svc, job_id)
    return FileResponse(svc.jobs.bundle_path(job_id), media_type="application/zip", filename=f"{job_id}.lcz")


@router.get("/api/jobs/{job_id}/canvas", tags=["jobs"])
def job_canvas(_: Auth, svc: Svc, job_id: str) -> dict[str, Any]:
    """The canvas and settings that made a finished job (to restore them in the editor)."""
    job = _finished(svc, job_id)
    canvas = load_bundle(svc.jobs.bundle_path(job_id).read_bytes(), f"job {job_id}")
    return {"canvas": svc.canvases.to_json(canvas), "settings": asdict(job.settings)}
