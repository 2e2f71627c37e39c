"""What the routes work with, built once per app by `create_app` and kept on `app.state.services`:

- `Canvases`: canvas JSON to canvases over the image store and back, the live token counter, the size check;
- `Cutouts`: the cut-out worker, its bounded queue and cache;
- `Library`: the held-out sprites to compose with;
- `model_loaders`: how the job queue loads the model and the refine model;
- `Services`: all of them, the settings, the store and the job queue, with the token check (`Auth`) and the
  route dependency (`Svc`).
"""

from __future__ import annotations

import asyncio
import hmac
import io
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request, UploadFile

from ..canvas import Canvas, canvas_from_dict, canvas_to_dict
from ..conditioning import ConditioningBuilder
from ..models.cost import DEFAULT_STEPS, estimate_attention
from ..models.registry import token_rules
from .cutouts import CutoutFailed, cut_out
from .jobs import JobManager
from .responses import ApiError
from .store import ImageStore

if TYPE_CHECKING:
    from .app import ServerSettings

CUTOUT_QUEUE = 4
"""Cut-outs waiting or running at once; more get 429 (each takes about a second of CPU)."""
CUTOUT_CACHE = 64
LIBRARY_SIZE = 24


class TokenPlanner(ConditioningBuilder):
    """The token counter of /api/tokens and of the job size check: it keeps, per layer, only the kept-cell mask
    at grid resolution (never the full-canvas render), for at most `max_entries` layers."""

    def _entry(self, key: tuple[Any, ...], render: Callable[[], Any]) -> Any:
        entry = super()._entry(key, render)
        entry.image = None  # nothing here encodes; the render was needed only for its mask
        return entry


class Canvases:
    """Canvas JSON whose layer images are ids in the store, and the token budget of a job."""

    def __init__(self, settings: ServerSettings, store: ImageStore) -> None:
        self.settings = settings
        self.store = store
        # The token budget counts as the server's model sees the canvas (merged locked layers, pruning rule).
        self.planner = TokenPlanner(max_entries=256, rules=token_rules(settings.model))
        self.lock = threading.Lock()
        # The model runs in bfloat16 off the CPU and in float32 on it (`model_loaders`): the size estimate's terms.
        self.runs_on_cpu = (settings.device or ("cpu" if not _cuda_available() else "cuda")).split(":")[0] == "cpu"

    def from_json(self, doc: dict[str, Any]) -> Canvas:
        return canvas_from_dict(doc, lambda ref, where: self.store.get(ref, where), "canvas")

    def to_json(self, canvas: Canvas) -> dict[str, Any]:
        refs: list[str] = []
        stored: dict[int, str] = {}  # a bundle's layers share one image per member: store each once
        for layer in canvas.layers:
            if id(layer.image) not in stored:
                stored[id(layer.image)] = self.store.put_image(layer.image)[0]
            refs.append(stored[id(layer.image)])
        return canvas_to_dict(canvas, refs)

    def plan(self, canvas: Canvas, mode: str) -> Any:
        with self.lock:
            return self.planner.plan(canvas, mode)  # type: ignore[arg-type]

    def check_size(self, canvas: Canvas, mode: str, steps: int | None = None) -> None:
        """Refuse (413) a job whose token count is beyond `settings.max_tokens`, before it is queued, saying what
        it would cost (`models.cost`)."""
        settings = self.settings
        plan = self.plan(canvas, "collage" if mode == "refine" else mode)
        total = plan.total + plan.noisy
        if total > settings.max_tokens:
            estimate = estimate_attention(total, settings.refine_model if mode == "refine" else settings.model,
                                          bytes_per_element=4 if self.runs_on_cpu else 2, cpu=self.runs_on_cpu)
            raise ApiError(413, f"canvas: {total} tokens ({plan.noisy} noisy + {plan.total} condition, "
                           f"{mode}) is above this server's limit of {settings.max_tokens} (--max-tokens): "
                           f"{estimate.describe(steps or DEFAULT_STEPS)}; make the canvas smaller or hide layers")


class Cutouts:
    """Cut-outs in one worker thread of their own: they never wait for (or hold up) the generation worker, and
    run one at a time (MediaPipe's stderr silencing swaps the process's fd 2, which two at once would get wrong).
    At most `CUTOUT_QUEUE` wait; the last `CUTOUT_CACHE` answers are kept."""

    def __init__(self, store: ImageStore) -> None:
        self.store = store
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cutout")
        self.cache: dict[tuple[str, str, tuple[float, ...] | None], dict[str, Any]] = {}
        self.pending = 0

    async def cut(self, image_id: str, mode: str, box: list[float] | None) -> dict[str, Any]:
        key = (image_id, mode, tuple(box) if box is not None else None)
        if key in self.cache:
            return self.cache[key]
        if self.pending >= CUTOUT_QUEUE:
            raise ApiError(429, f"{self.pending} cut-outs already waiting; try again in a moment")
        self.pending += 1
        try:
            result = await asyncio.get_running_loop().run_in_executor(
                self.pool, cut_out, self.store, image_id, mode, box)
        except KeyError:
            raise ApiError(404, f"no image {image_id!r} (upload it to /api/images first)") from None
        except CutoutFailed as exc:
            raise ApiError(exc.status, exc.message) from None
        finally:
            self.pending -= 1
        answer = {"id": result.image_id, "width": result.width, "height": result.height,
                  "url": f"/api/images/{result.image_id}", "offset": list(result.offset), "method": result.method,
                  "source": {"id": image_id, "width": result.source_size[0], "height": result.source_size[1]},
                  "seconds": round(result.seconds, 3)}
        if len(self.cache) >= CUTOUT_CACHE:
            self.cache.pop(next(iter(self.cache)))
        self.cache[key] = answer
        return answer

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


class Library:
    """The first `LIBRARY_SIZE` held-out identities (never seen in training), each rendered once when first asked
    for: the cache holds at most `LIBRARY_SIZE` small PNGs."""

    def __init__(self) -> None:
        self.cache: dict[str, bytes] = {}

    @cached_property
    def indices(self) -> dict[str, int]:
        from ..world import heldout_indices, identity_id

        return {identity_id(i): i for i in heldout_indices()[:LIBRARY_SIZE]}

    def entries(self) -> list[dict[str, Any]]:
        from ..world import describe, identity_from_index

        return [{"id": sprite, "description": describe(identity_from_index(i)), "url": f"/api/library/{sprite}.png"}
                for sprite, i in self.indices.items()]

    def sprite_png(self, sprite: str) -> bytes:
        from ..world import identity_from_index, render_sprite

        if sprite not in self.indices:
            raise ApiError(404, f"no library sprite {sprite[:40]!r}")
        if sprite not in self.cache:
            buf = io.BytesIO()
            render_sprite(identity_from_index(self.indices[sprite]), size=96).save(buf, format="PNG")
            self.cache[sprite] = buf.getvalue()
        return self.cache[sprite]


def refine_backend(model: str) -> str:
    from ..models.registry import resolve_model
    from ..refine import auto_backend

    return auto_backend(resolve_model(model))


def model_loaders(settings: ServerSettings) -> tuple[Callable[[], Any], Callable[[], Any] | None]:
    """The loaders of the editor's model (bfloat16 off the CPU) and of its refine model (None: no refine mode)."""

    def load() -> Any:
        import torch

        from ..modelcheck import check_model
        from ..pipeline import LayerComposerPipeline

        check_model(settings.model)
        pipe = LayerComposerPipeline.from_pretrained(settings.model)
        device = settings.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if device != "cpu":
            pipe.to(device, torch.bfloat16)
        return pipe

    def load_refine() -> Any:
        from ..modelcheck import check_model
        from ..refine import RefineEngine

        check_model(settings.refine_model)
        return RefineEngine(settings.refine_model, refine_backend(settings.refine_model), settings.device)

    return load, load_refine if settings.refine_model else None


@dataclass
class Services:
    settings: ServerSettings
    store: ImageStore
    jobs: JobManager
    canvases: Canvases
    cutouts: Cutouts
    library: Library = field(default_factory=Library)

    async def read_upload(self, upload: UploadFile, what: str) -> bytes:
        limit = self.settings.max_upload_bytes
        data = await upload.read(limit + 1)
        if len(data) > limit:
            raise ApiError(413, f"{what}: larger than {limit >> 20} MiB")
        return data

    def job_or_404(self, job_id: str) -> Any:
        job = self.jobs.get(job_id)
        if job is None:
            raise ApiError(404, f"no job {job_id[:40]!r}")
        return job


def services(request: Request) -> Services:
    return request.app.state.services


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
Svc = Annotated[Services, Depends(services)]


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
