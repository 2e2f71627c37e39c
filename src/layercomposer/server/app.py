"""The editor's HTTP server: a single-page app and a JSON API (FastAPI; OpenAPI docs at /docs).

Every bad request gets a 4xx JSON ``{"error": "..."}`` naming the problem. Before any route runs, `guard.py`
refuses a foreign `Host` (DNS rebinding) and cross-origin requests, checks the token, and bounds the body as it
streams in. Image pixels are size-checked from the file header before decoding; images are addressed by
content hash, bundles are read only from inside their zip, so nothing a request says can make the server read
or write outside its folders. Nothing sent by a user is ever unpickled. What the server keeps in memory is
bounded: decoded images by bytes (`ImageStore`), token plans by entries of grid-resolution masks, finished
jobs by a window (the rest are on disk).

The parts: `create_app` here wires the services (`services.py`), the routers (`routes/`), the error shape
(`responses.py`), the request bodies (`schemas.py`) and the guard and memory middleware together.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from .._version import __version__
from ..errors import LayerComposerError
from ..settings import DEFAULT_MAX_TOKENS
from .guard import Guard
from .jobs import JobManager
from .memory import ReleaseFreedMemory
from .responses import SafeJSONResponse, add_error_handlers
from .routes import canvas, jobs, pages
from .routes.pages import STATIC
from .services import Canvases, Cutouts, Services, model_loaders
from .services import refine_backend as _refine_backend
from .store import DEFAULT_CACHE_BYTES, ImageStore

__all__ = ["DEFAULT_MAX_TOKENS", "STATIC", "ServerSettings", "_refine_backend", "create_app", "uvicorn_config"]



@dataclass
class ServerSettings:
    model: str
    outputs: Path
    token: str | None = None
    max_queue: int = 8
    max_upload_bytes: int = 64 * 1024 * 1024
    preview_every: int = 4
    device: str | None = None
    refine_model: str | None = None
    """Model of the refine mode (a FLUX.1 Kontext folder / hub id, or demo-collage); None: no refine mode."""
    max_tokens: int = DEFAULT_MAX_TOKENS
    """Most tokens (noisy + condition, in the job's mode) a job may have; larger canvases get 413."""
    image_cache_bytes: int = DEFAULT_CACHE_BYTES
    """Memory for uploaded images (encoded + decoded), least recently used dropped first."""
    allowed_hosts: tuple[str, ...] = ()
    """Host names besides localhost, 127.0.0.1, [::1] and the served address that requests may name."""


def create_app(settings: ServerSettings, load_pipeline: Any = None) -> FastAPI:
    """The FastAPI application: the services (`services.py`), the request guard and memory trimming around
    them, and the routers (`routes/`); `load_pipeline` (for tests) replaces loading `settings.model`."""
    if settings.token is not None and not settings.token:
        raise LayerComposerError("token: must not be empty (leave it out for no token)")
    store = ImageStore(settings.outputs / "uploads", settings.image_cache_bytes)
    load, load_refine = model_loaders(settings)
    job_manager = JobManager(load_pipeline or load, settings.outputs, settings.max_queue, settings.preview_every,
                             load_refine=load_refine, model_names=(settings.model, settings.refine_model))
    services = Services(settings=settings, store=store, jobs=job_manager, canvases=Canvases(settings, store),
                        cutouts=Cutouts(store))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        services.jobs.shutdown()
        services.cutouts.shutdown()

    app = FastAPI(title="layercomposer editor", version=__version__, lifespan=lifespan,
                  default_response_class=SafeJSONResponse, docs_url=None, redoc_url=None,
                  description="Compose a layered canvas and render it. Images are uploaded once "
                  "(POST /api/images) and referred to by id in canvas JSON.")
    app.add_middleware(ReleaseFreedMemory)
    app.add_middleware(Guard, token=settings.token, max_body=settings.max_upload_bytes,
                       allowed_hosts=settings.allowed_hosts)  # added last: runs first
    app.state.services = services
    app.state.jobs = services.jobs
    app.state.settings = settings
    app.state.store = store
    app.state.planner = services.canvases.planner
    add_error_handlers(app)
    # In this order, the order of the API reference.
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(pages.health_router)
    app.include_router(canvas.router)
    app.include_router(jobs.router)
    app.include_router(canvas.library_router)
    return app


SHUTDOWN_GRACE_S = 1.0
"""On SIGTERM / Ctrl+C, how long open responses (event streams) may run on before they are cut."""


def uvicorn_config(app: FastAPI, host: str, port: int) -> Any:
    """The uvicorn configuration `layercomposer serve` runs: open event streams never hold up a shutdown
    for longer than `SHUTDOWN_GRACE_S` (the whole stop takes well under 3 s)."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level="warning",
                          timeout_graceful_shutdown=SHUTDOWN_GRACE_S, timeout_keep_alive=5)
