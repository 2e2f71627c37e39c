"""The editor's HTTP server: a single-page app and a JSON API (FastAPI; OpenAPI docs at /docs).

Every bad request gets a 4xx JSON ``{"error": "..."}`` naming the problem. Before any route runs, `guard.py`
refuses a foreign `Host` (DNS rebinding) and cross-origin requests, checks the token, and bounds the body as it
streams in. Image pixels are size-checked from the file header before decoding; images are addressed by
content hash, bundles are read only from inside their zip, so nothing a request says can make the server read
or write outside its folders. Nothing sent by a user is ever unpickled. What the server keeps in memory is
bounded: decoded images by bytes (`ImageStore`), token plans by entries of grid-resolution masks, finished
jobs by a window (the rest are on disk).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import io
import json
import re
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, File, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field, ValidationError, field_validator
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .._version import __version__
from ..canvas import (
    Canvas,
    LayerImage,
    canvas_from_dict,
    canvas_to_dict,
    load_bundle,
    save_bundle_bytes,
)
from ..conditioning import ConditioningBuilder
from ..errors import LayerComposerError
from ..models.cost import DEFAULT_STEPS, estimate_attention
from ..models.registry import token_rules
from .cutouts import CutoutFailed, cut_out
from .guard import BodyTooLarge, Guard
from .jobs import JobManager, JobSettings, QueueFull
from .store import DEFAULT_CACHE_BYTES, ImageStore

STATIC = Path(__file__).resolve().parent / "static"
LIBRARY_SIZE = 24
CUTOUT_QUEUE = 4
"""Cut-outs waiting or running at once; more get 429 (each takes about a second of CPU)."""
CUTOUT_CACHE = 64
DEFAULT_MAX_TOKENS = 16384
"""Most tokens (noisy + condition) a job may have: about 1024x1024 px with a few layers. The documented
largest canvas, 4096x4096, is 65536 noisy tokens alone, hours per picture on a CPU."""


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


class SafeJSONResponse(JSONResponse):
    """JSON with every non-ASCII character escaped: a string that is not valid Unicode can never make the
    encoding of an answer fail (inputs refuse them; this is the net under that)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


class TokenPlanner(ConditioningBuilder):
    """The token counter of /api/tokens and of the job size check: it keeps, per layer, only the kept-cell mask
    at grid resolution (never the full-canvas render), for at most `max_entries` layers."""

    def _entry(self, key: tuple[Any, ...], render: Callable[[], Any]) -> Any:
        entry = super()._entry(key, render)
        entry.image = None  # nothing here encodes; the render was needed only for its mask
        return entry


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _first_error(errors: Any) -> str:
    """One line from pydantic's error list: "settings.steps: Input should be greater than or equal to 1"."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    return f"{where or 'request'}: {first.get('msg')}"


def _refine_backend(model: str) -> str:
    from ..models.registry import resolve_model
    from ..refine import auto_backend

    return auto_backend(resolve_model(model))


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _trained_sizes(pipe: Any) -> list[list[int]] | None:
    """The canvas sizes a loaded pipeline says it was trained at, as JSON; None when unknown or not loaded."""
    sizes = getattr(pipe, "trained_sizes", None)
    return None if sizes is None else [[int(w), int(h)] for w, h in sizes]


def authorised(request: Request) -> None:
    """The optional bearer token: `Authorization: Bearer ...`, or `?token=...` (EventSource sends no headers).

    `Guard` checks it before the body is read; this repeats the check for routes built without the guard."""
    token = request.app.state.settings.token
    if token is None:
        return
    header = request.headers.get("authorization", "")
    given = header[7:] if header.lower().startswith("bearer ") else request.query_params.get("token", "")
    if not hmac.compare_digest(given.encode("utf-8", "replace"), token.encode("utf-8", "replace")):
        raise ApiError(401, "missing or wrong bearer token")


Auth = Annotated[None, Depends(authorised)]


class SettingsIn(BaseModel):
    """Generation settings of a job."""

    prompt: str | None = Field(default=None, max_length=2000)
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    steps: int | None = Field(default=None, ge=1, le=200)
    guidance: float | None = Field(default=None, ge=0.0, le=30.0)
    mode: Literal["layered", "unpruned", "collage", "refine"] = "layered"
    instruction: str | None = Field(default=None, max_length=2000)
    hard_lock: bool = False
    """Hold the cells that show locked layers only to their latents (model modes; ignored by refine)."""
    strength: float = Field(default=1.0, gt=0.0, le=1.0)
    """Image-to-image from the flattened canvas: the share of the steps run (model modes; 1 = from noise)."""

    @field_validator("prompt", "instruction")
    @classmethod
    def _valid_text(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("not valid Unicode text (a lone surrogate)") from None
        return value


class CanvasJobIn(BaseModel):
    """A job from a canvas JSON whose layer images are ids returned by POST /api/images."""

    canvas: dict[str, Any]
    settings: SettingsIn = SettingsIn()


class CanvasIn(BaseModel):
    canvas: dict[str, Any]


class CutoutIn(BaseModel):
    """What to cut out of a stored image."""

    mode: Literal["person", "box"] = Field(
        default="person",
        description='"person": the person of the largest face (MediaPipe selfie segmentation); '
        '"box": the object inside `box` (OpenCV GrabCut).')
    box: list[float] | None = Field(
        default=None, json_schema_extra={"minItems": 4, "maxItems": 4}, examples=[[270, 330, 512, 512]],
        description="[x0, y0, x1, y1] in the image's own pixels (x1, y1 exclusive), at least 8x8; needed by "
        '"box"; with "person" it limits the search to the box.')


class CutoutOut(BaseModel):
    """The stored cut-out (an RGBA PNG cropped to its content) and where it sits in the source image."""

    id: str = Field(description="image id of the cut-out, for canvas JSON")
    width: int
    height: int
    url: str
    offset: tuple[int, int] = Field(description="[x, y] of the cut-out's top-left corner in the source image")
    method: str = Field(description="what made the mask")
    source: dict[str, Any] = Field(description="the source image: id, width, height")
    seconds: float


def _libc_malloc_trim() -> Callable[[], Any] | None:
    """glibc's malloc_trim(0), or None where there is none (macOS, musl)."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    return lambda: trim(0)


class ReleaseFreedMemory:
    """After each request that may have decoded or rendered big images (a POST under /api/), hand the memory
    it freed back to the system (glibc's malloc_trim).

    glibc keeps freed memory in the heap of the thread that freed it, and once a 16 MB block (Pillow's unit
    for image pixels) has been freed it serves blocks of that size from those heaps: each worker thread that
    decoded a 40 MP upload then stays about 160 MB larger, whatever the bounded caches drop. Trimming after
    the request costs a few milliseconds, off the request's own time; sampling is not touched (mmapping every
    big block instead made generation 20-40% slower)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.trim = _libc_malloc_trim()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            await self.app(scope, receive, send)
        finally:
            if (self.trim is not None and scope["type"] == "http" and scope.get("method") == "POST"
                    and scope.get("path", "").startswith("/api/")):
                await asyncio.to_thread(self.trim)


def create_app(settings: ServerSettings, load_pipeline: Any = None) -> FastAPI:
    """The FastAPI application; `load_pipeline` (for tests) replaces loading `settings.model`."""
    if settings.token is not None and not settings.token:
        raise LayerComposerError("token: must not be empty (leave it out for no token)")
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        jobs.shutdown()
        cutout_pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="layercomposer editor", version=__version__, lifespan=lifespan,
                  default_response_class=SafeJSONResponse, docs_url=None, redoc_url=None,
                  description="Compose a layered canvas and render it. Images are uploaded once "
                  "(POST /api/images) and referred to by id in canvas JSON.")
    app.add_middleware(ReleaseFreedMemory)
    app.add_middleware(Guard, token=settings.token, max_body=settings.max_upload_bytes,
                       allowed_hosts=settings.allowed_hosts)  # added last: runs first
    outputs = settings.outputs
    store = ImageStore(outputs / "uploads", settings.image_cache_bytes)

    def default_loader() -> Any:
        import torch

        from ..modelcheck import check_model
        from ..pipeline import LayerComposerPipeline

        check_model(settings.model)
        pipe = LayerComposerPipeline.from_pretrained(settings.model)
        device = settings.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if device != "cpu":
            pipe.to(device, torch.bfloat16)
        return pipe

    def refine_loader() -> Any:
        from ..modelcheck import check_model
        from ..refine import RefineEngine

        check_model(settings.refine_model)
        return RefineEngine(settings.refine_model, _refine_backend(settings.refine_model), settings.device)

    jobs = JobManager(load_pipeline or default_loader, outputs, settings.max_queue, settings.preview_every,
                      load_refine=refine_loader if settings.refine_model else None,
                      model_names=(settings.model, settings.refine_model))
    # The token budget counts as the server's model sees the canvas (merged locked layers, pruning rule).
    planner = TokenPlanner(max_entries=256, rules=token_rules(settings.model))
    planner_lock = threading.Lock()
    # The model runs in bfloat16 off the CPU and in float32 on it (`default_loader`): the size estimate's terms.
    runs_on_cpu = (settings.device or ("cpu" if not _cuda_available() else "cuda")).split(":")[0] == "cpu"
    library_cache: dict[str, bytes] = {}
    # One worker of its own: cut-outs never wait for (or hold up) the generation worker, and run one at a time
    # (MediaPipe's stderr silencing swaps the process's fd 2, which two at once would get wrong).
    cutout_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cutout")
    cutout_cache: dict[tuple[str, str, tuple[float, ...] | None], dict[str, Any]] = {}
    cutouts_pending = 0
    app.state.jobs = jobs
    app.state.settings = settings
    app.state.store = store
    app.state.planner = planner

    # -- errors --------------------------------------------------------------------------------------------

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return SafeJSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(QueueFull)
    async def _queue_full(request: Request, exc: QueueFull) -> JSONResponse:
        return SafeJSONResponse({"error": str(exc)}, status_code=429, headers={"Retry-After": "5"})

    @app.exception_handler(LayerComposerError)
    async def _bad_input(request: Request, exc: LayerComposerError) -> JSONResponse:
        return SafeJSONResponse({"error": str(exc)}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return SafeJSONResponse({"error": _first_error(exc.errors())}, status_code=422)

    @app.exception_handler(BodyTooLarge)
    async def _too_large(request: Request, exc: BodyTooLarge) -> JSONResponse:
        return SafeJSONResponse({"error": str(exc)}, status_code=413)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        """FastAPI's and Starlette's own errors (unknown route, wrong method, an unreadable body) in our shape."""
        if isinstance(exc.__cause__, BodyTooLarge):
            return SafeJSONResponse({"error": str(exc.__cause__)}, status_code=413)
        if exc.status_code in (204, 304):
            return Response(status_code=exc.status_code, headers=exc.headers)
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail, ensure_ascii=True)
        if isinstance(exc.__cause__, RecursionError):
            message = "request: JSON nested too deeply"
        return SafeJSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)

    # -- helpers -------------------------------------------------------------------------------------------

    def canvas_from_json(doc: dict[str, Any]) -> Canvas:
        return canvas_from_dict(doc, lambda ref, where: store.get(ref, where), "canvas")

    def canvas_json(canvas: Canvas) -> dict[str, Any]:
        refs: list[str] = []
        stored: dict[int, str] = {}  # a bundle's layers share one image per member: store each once
        for layer in canvas.layers:
            if id(layer.image) not in stored:
                stored[id(layer.image)] = store.put_image(layer.image)[0]
            refs.append(stored[id(layer.image)])
        return canvas_to_dict(canvas, refs)

    def check_size(canvas: Canvas, mode: str, steps: int | None = None) -> None:
        """Refuse (413) a job whose token count is beyond `settings.max_tokens`, before it is queued, saying what
        it would cost (`models.cost`)."""
        plan_mode = "collage" if mode == "refine" else mode
        with planner_lock:
            plan = planner.plan(canvas, plan_mode)  # type: ignore[arg-type]
        total = plan.total + plan.noisy
        if total > settings.max_tokens:
            estimate = estimate_attention(total, settings.refine_model if mode == "refine" else settings.model,
                                          bytes_per_element=4 if runs_on_cpu else 2, cpu=runs_on_cpu)
            raise ApiError(413, f"canvas: {total} tokens ({plan.noisy} noisy + {plan.total} condition, "
                           f"{mode}) is above this server's limit of {settings.max_tokens} (--max-tokens): "
                           f"{estimate.describe(steps or DEFAULT_STEPS)}; make the canvas smaller or hide layers")

    async def read_upload(upload: UploadFile, what: str) -> bytes:
        data = await upload.read(settings.max_upload_bytes + 1)
        if len(data) > settings.max_upload_bytes:
            raise ApiError(413, f"{what}: larger than {settings.max_upload_bytes >> 20} MiB")
        return data

    def job_or_404(job_id: str) -> Any:
        job = jobs.get(job_id)
        if job is None:
            raise ApiError(404, f"no job {job_id[:40]!r}")
        return job

    # -- pages ---------------------------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/docs", include_in_schema=False)
    def docs() -> FileResponse:
        """The API reference, rendered from /openapi.json by a page of our own (Swagger UI would need a CDN)."""
        return FileResponse(STATIC / "docs.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # -- API -----------------------------------------------------------------------------------------------

    @app.get("/api/health", tags=["server"])
    def health() -> dict[str, Any]:
        """Server, model and queue state."""
        pipe = jobs.pipeline
        return {"status": "ok" if jobs.pipeline_error is None else "error", "version": __version__,
                "model": settings.model, "model_ready": jobs.ready, "model_error": jobs.pipeline_error,
                "queued": jobs.queued(), "max_queue": settings.max_queue, "auth": bool(settings.token),
                "max_tokens": settings.max_tokens,
                "refine_model": settings.refine_model,
                "defaults": {"steps": pipe.default_steps, "guidance": pipe.guidance_scale} if pipe else None,
                # [[width, height], ...] the model was trained at (model_index.json); null when unknown.
                "trained_sizes": _trained_sizes(pipe)}

    @app.post("/api/images", tags=["canvas"])
    async def upload_image(_: Auth, file: Annotated[UploadFile, File(description="PNG, WebP, JPEG...")]) -> dict:
        """Store an image (checked: an image, at most 40 MP); returns its id for canvas JSON."""
        data = await read_upload(file, f"image {file.filename!r}")
        image_id, image = store.put(data, f"image {file.filename!r}")
        w, h = image.size
        return {"id": image_id, "width": w, "height": h, "url": f"/api/images/{image_id}"}

    @app.post("/api/images/{image_id}/cutout", tags=["canvas"], response_model=CutoutOut,
              summary="Cut the subject out of a stored image",
              responses={404: {"description": "no such image"},
                         422: {"description": "bad box, or nothing found (no person: send a box)"},
                         429: {"description": "too many cut-outs waiting"},
                         501: {"description": "the photo extra is not installed"}})
    async def cutout_image(_: Auth, image_id: str, body: CutoutIn) -> dict[str, Any]:
        """The editor's **Cut out** button. `{"mode": "person"}` keeps the person of the largest face
        (MediaPipe selfie segmentation); `{"mode": "box", "box": [x0, y0, x1, y1]}` the object inside the box
        (OpenCV GrabCut), the box in the image's own pixels. Alpha edges are cleaned and feathered, a source
        that is already transparent stays so, and the result is cropped to its content and stored like an
        upload: the answer has its id and size, plus `offset`, where its top-left corner lies in the source
        image (place it there to keep the cut content where it was).

        Errors: 404 unknown image; 422 bad box, or nothing found (no face, so no person: draw a box);
        501 when the photo tools are not installed (`pip install "layercomposer[photo]"`). Runs in a worker
        thread of its own (about a second for a 512 px photo), never in the generation queue.
        """
        nonlocal cutouts_pending
        key = (image_id, body.mode, tuple(body.box) if body.box is not None else None)
        if key in cutout_cache:
            return cutout_cache[key]
        if cutouts_pending >= CUTOUT_QUEUE:
            raise ApiError(429, f"{cutouts_pending} cut-outs already waiting; try again in a moment")
        cutouts_pending += 1
        try:
            result = await asyncio.get_running_loop().run_in_executor(
                cutout_pool, cut_out, store, image_id, body.mode, body.box)
        except KeyError:
            raise ApiError(404, f"no image {image_id!r} (upload it to /api/images first)") from None
        except CutoutFailed as exc:
            raise ApiError(exc.status, exc.message) from None
        finally:
            cutouts_pending -= 1
        answer = {"id": result.image_id, "width": result.width, "height": result.height,
                  "url": f"/api/images/{result.image_id}", "offset": list(result.offset), "method": result.method,
                  "source": {"id": image_id, "width": result.source_size[0], "height": result.source_size[1]},
                  "seconds": round(result.seconds, 3)}
        if len(cutout_cache) >= CUTOUT_CACHE:
            cutout_cache.pop(next(iter(cutout_cache)))
        cutout_cache[key] = answer
        return answer

    @app.get("/api/images/{image_id}", tags=["canvas"])
    def get_image(_: Auth, image_id: str) -> FileResponse:
        path = store.path(image_id)
        if not path.is_file():
            raise ApiError(404, f"no image {image_id!r}")
        return FileResponse(path, headers={"Cache-Control": "max-age=31536000, immutable"})

    @app.post("/api/tokens", tags=["canvas"])
    def tokens(_: Auth, body: CanvasIn) -> dict[str, Any]:
        """Conditioning token statistics of a canvas (the code of `layercomposer tokens`)."""
        canvas = canvas_from_json(body.canvas)
        with planner_lock:
            return planner.plan(canvas, "layered").as_dict()

    @app.post("/api/bundle", tags=["canvas"])
    def bundle(_: Auth, body: CanvasIn) -> Response:
        """The canvas as an `.lcz` bundle (save project)."""
        data = save_bundle_bytes(canvas_from_json(body.canvas))
        return Response(data, media_type="application/zip",
                        headers={"Content-Disposition": 'attachment; filename="canvas.lcz"'})

    @app.post("/api/open", tags=["canvas"])
    async def open_bundle(_: Auth, bundle: Annotated[UploadFile, File(description=".lcz bundle")]) -> dict:
        """Read an `.lcz` bundle; returns its canvas JSON with the images stored and referred to by id."""
        canvas = load_bundle(await read_upload(bundle, "bundle"), f"bundle {bundle.filename!r}")
        return {"canvas": canvas_json(canvas)}

    @app.post("/api/jobs", status_code=202, tags=["jobs"])
    async def create_job(_: Auth, request: Request) -> dict[str, Any]:
        """Queue a generation. JSON body: {"canvas": {...image ids...}, "settings": {...}}; or multipart with
        `bundle` (.lcz), or `canvas` (JSON) plus `files` (the images it names), and optional `settings` (JSON).
        """
        kind = request.headers.get("content-type", "")
        if kind.startswith("application/json"):
            try:
                body = CanvasJobIn.model_validate(await request.json())
            except ValidationError as exc:
                raise ApiError(422, _first_error(exc.errors())) from None
            except RecursionError:
                raise ApiError(400, "request: JSON nested too deeply") from None
            except ValueError:
                raise ApiError(400, "request: body is not valid JSON") from None
            canvas, job_settings = canvas_from_json(body.canvas), body.settings
        elif kind.startswith("multipart/form-data"):
            canvas, job_settings = await _multipart_job(request)
        else:
            raise ApiError(415, "send JSON or multipart/form-data")
        if job_settings.mode == "refine" and not settings.refine_model:
            raise ApiError(400, "settings.mode: this server has no refine model (start it with --refine-model)")
        await run_in_threadpool(check_size, canvas, job_settings.mode, job_settings.steps)
        job = jobs.submit(canvas, JobSettings(**job_settings.model_dump()))
        return job.summary() | {"position": jobs.queued()}

    async def _multipart_job(request: Request) -> tuple[Canvas, SettingsIn]:
        form = await request.form(max_files=200, max_fields=50)
        raw_settings = form.get("settings")
        try:
            job_settings = SettingsIn.model_validate(json.loads(raw_settings) if isinstance(raw_settings, str)
                                                     else {})
        except ValidationError as exc:
            raise ApiError(422, "settings." + _first_error(exc.errors())) from None
        except (ValueError, RecursionError):
            raise ApiError(400, "settings: not valid JSON") from None
        upload = form.get("bundle")
        if upload is not None and not isinstance(upload, str):
            return load_bundle(await read_upload(upload, "bundle"), f"bundle {upload.filename!r}"), job_settings
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
            files[item.filename or ""] = await read_upload(item, f"file {item.filename!r}")

        def resolve(ref: str, where: str) -> LayerImage:
            if ref not in files:
                raise ApiError(400, f"{where}: no uploaded file of that name")
            return LayerImage.from_bytes(files[ref], where, source_name=ref)

        return canvas_from_dict(parsed, resolve, "canvas"), job_settings

    @app.get("/api/jobs", tags=["jobs"])
    def list_jobs(_: Auth) -> list[dict[str, Any]]:
        """Every job, newest first (finished ones survive a restart)."""
        return jobs.history()

    @app.get("/api/jobs/{job_id}", tags=["jobs"])
    def get_job(_: Auth, job_id: str) -> dict[str, Any]:
        return job_or_404(job_id).summary()

    @app.post("/api/jobs/{job_id}/cancel", tags=["jobs"])
    def cancel_job(_: Auth, job_id: str) -> dict[str, Any]:
        job_or_404(job_id)
        return jobs.cancel(job_id).summary()

    @app.get("/api/jobs/{job_id}/events", tags=["jobs"])
    def job_events(_: Auth, request: Request, job_id: str) -> StreamingResponse:
        """Server-sent events: queued, started, step (with a preview every few steps), done | failed | cancelled."""
        job_or_404(job_id)
        last = request.headers.get("last-event-id", "")
        since = int(last) + 1 if last.isascii() and last.isdigit() and len(last) < 12 else 0

        async def stream() -> AsyncIterator[str]:
            # Async: an open stream holds no worker thread, and it ends when the server shuts down.
            yield "retry: 1000\n\n"
            async for item in jobs.stream(job_id, since):
                if item is None:
                    yield ": keep-alive\n\n"
                    continue
                number, event = item
                yield f"id: {number}\nevent: {event['type']}\ndata: {json.dumps(event, ensure_ascii=True)}\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/api/jobs/{job_id}/result.png", tags=["jobs"])
    def job_result(_: Auth, job_id: str) -> FileResponse:
        job = job_or_404(job_id)
        if job.status != "done":
            raise ApiError(409, f"job {job_id} is {job.status}, not done")
        return FileResponse(jobs.result_path(job_id), media_type="image/png",
                            filename=f"layercomposer-{job_id}.png", content_disposition_type="inline")

    @app.get("/api/jobs/{job_id}/canvas.lcz", tags=["jobs"])
    def job_bundle(_: Auth, job_id: str) -> FileResponse:
        job = job_or_404(job_id)
        if job.status != "done":
            raise ApiError(409, f"job {job_id} is {job.status}, not done")
        return FileResponse(jobs.bundle_path(job_id), media_type="application/zip", filename=f"{job_id}.lcz")

    @app.get("/api/jobs/{job_id}/canvas", tags=["jobs"])
    def job_canvas(_: Auth, job_id: str) -> dict[str, Any]:
        """The canvas and settings that made a finished job (to restore them in the editor)."""
        job = job_or_404(job_id)
        if job.status != "done":
            raise ApiError(409, f"job {job_id} is {job.status}, not done")
        canvas = load_bundle(jobs.bundle_path(job_id).read_bytes(), f"job {job_id}")
        return {"canvas": canvas_json(canvas), "settings": asdict(job.settings)}

    @app.get("/api/library", tags=["canvas"])
    def library(_: Auth) -> list[dict[str, Any]]:
        """Sprites of held-out identities (never seen in training), to compose with."""
        from ..world import describe, heldout_indices, identity_from_index, identity_id

        return [{"id": identity_id(i), "description": describe(identity_from_index(i)),
                 "url": f"/api/library/{identity_id(i)}.png"} for i in heldout_indices()[:LIBRARY_SIZE]]

    @app.get("/api/library/{sprite}.png", tags=["canvas"])
    def library_sprite(_: Auth, sprite: str) -> Response:
        from ..world import index_from_id, is_held_out, render_sprite

        if not re.fullmatch(r"c\d{5}", sprite, flags=re.ASCII) or not is_held_out(index_from_id(sprite)):
            raise ApiError(404, f"no library sprite {sprite!r}")
        if sprite not in library_cache:
            from ..world import identity_from_index

            buf = io.BytesIO()
            render_sprite(identity_from_index(index_from_id(sprite)), size=96).save(buf, format="PNG")
            library_cache[sprite] = buf.getvalue()
        return Response(library_cache[sprite], media_type="image/png",
                        headers={"Cache-Control": "max-age=86400"})

    return app


SHUTDOWN_GRACE_S = 1.0
"""On SIGTERM / Ctrl+C, how long open responses (event streams) may run on before they are cut."""


def uvicorn_config(app: FastAPI, host: str, port: int) -> Any:
    """The uvicorn configuration `layercomposer serve` runs: open event streams never hold up a shutdown
    for longer than `SHUTDOWN_GRACE_S` (the whole stop takes well under 3 s)."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level="warning",
                          timeout_graceful_shutdown=SHUTDOWN_GRACE_S, timeout_keep_alive=5)
