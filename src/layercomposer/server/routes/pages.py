"""The editor's page, the API reference page, and the health answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse

from ..._version import __version__
from ...settings import limits_json
from ..services import Svc

STATIC = Path(__file__).resolve().parent.parent / "static"

router = APIRouter()


@router.get("/", include_in_schema=False)
def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/docs", include_in_schema=False)
def docs() -> FileResponse:
    """The API reference, rendered from /openapi.json by a page of our own (Swagger UI would need a CDN)."""
    return FileResponse(STATIC / "docs.html", headers={"Cache-Control": "no-cache"})


health_router = APIRouter()


@health_router.get("/api/health", tags=["server"])
def health(svc: Svc) -> dict[str, Any]:
    """Server, model and queue state."""
    jobs, settings = svc.jobs, svc.settings
    pipe = jobs.pipeline
    return {"status": "ok" if jobs.pipeline_error is None else "error", "version": __version__,
            "model": settings.model, "model_ready": jobs.ready, "model_error": jobs.pipeline_error,
            "queued": jobs.queued(), "max_queue": settings.max_queue, "auth": bool(settings.token),
            "max_tokens": settings.max_tokens,
            "refine_model": settings.refine_model,
            "defaults": {"steps": pipe.default_steps, "guidance": pipe.guidance_scale} if pipe else None,
            # The generation settings' limits (layercomposer.settings), which the editor's inputs take.
            "limits": limits_json(),
            # [[width, height], ...] the model was trained at (model_index.json); null when unknown.
            "trained_sizes": trained_sizes(pipe)}


def trained_sizes(pipe: Any) -> list[list[int]] | None:
    """The canvas sizes a loaded pipeline says it was trained at, as JSON; None when unknown or not loaded."""
    sizes = getattr(pipe, "trained_sizes", None)
    return None if sizes is None else [[int(w), int(h)] for w, h in sizes]
