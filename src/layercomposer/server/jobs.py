"""Generation jobs for the editor: one worker runs them in order from a bounded queue.

A job's result (picture, canvas bundle, settings) is written to the outputs folder *before* the job is
reported done, so a reload of the page or a restart of the server loses no finished result. Progress is
kept as an append-only list of events per job that any number of readers stream from (server-sent events).
"""

from __future__ import annotations

import base64
import io
import json
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..canvas import Canvas, save_bundle_bytes, write_atomic
from ..errors import LayerComposerError

JOB_ID_PATTERN = r"^[0-9a-f]{16}$"
TERMINAL = ("done", "failed", "cancelled")


class QueueFull(LayerComposerError):
    """The queue holds as many jobs as it may."""


class Cancelled(Exception):
    """Raised inside the sampler's callback to stop a cancelled job."""


@dataclass
class JobSettings:
    """What a user chooses besides the canvas."""

    prompt: str | None = None
    seed: int = 0
    steps: int | None = None
    guidance: float | None = None
    mode: str = "layered"
    """layered, unpruned, collage (the model of the server) or refine (the refine engine)."""
    instruction: str | None = None
    """Refine only: the editing instruction (default: make the collage one natural picture)."""
    hard_lock: bool = False
    """Hold the cells that show locked layers only to their latents while sampling."""
    strength: float = 1.0
    """Image-to-image from the flattened canvas: the share of the steps run (1 = from noise)."""


@dataclass
class Job:
    id: str
    settings: JobSettings
    canvas: Canvas | None
    created: float
    status: str = "queued"
    step: int = 0
    total: int = 0
    error: str | None = None
    finished: float | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    cancel: threading.Event = field(default_factory=threading.Event)

    def summary(self) -> dict[str, Any]:
        """The job as the API shows it."""
        return {
            "id": self.id, "status": self.status, "step": self.step, "total": self.total, "error": self.error,
            "created": self.created, "finished": self.finished, "settings": asdict(self.settings),
            "stats": self.stats,
            "result": f"/api/jobs/{self.id}/result.png" if self.status == "done" else None,
            "canvas": f"/api/jobs/{self.id}/canvas.lcz" if self.status == "done" else None,
        }


class JobManager:
    """Bounded queue, single worker thread, per-job event logs, results persisted under `outputs/jobs`."""

    def __init__(self, load_pipeline: Callable[[], Any], outputs: Path, max_queue: int = 8,
                 preview_every: int = 4, load_refine: Callable[[], Any] | None = None) -> None:
        self.outputs = outputs
        self.jobs_dir = outputs / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.preview_every = preview_every
        self._load_pipeline = load_pipeline
        self._load_refine = load_refine
        self._refine: Any = None
        self._pipe: Any = None
        self._pipe_error: str | None = None
        self._queue: queue.Queue[Job] = queue.Queue(maxsize=max_queue)
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._load_history()
        self._worker = threading.Thread(target=self._run, name="layercomposer-worker", daemon=True)
        self._worker.start()

    # -- public --------------------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._pipe is not None

    @property
    def pipeline_error(self) -> str | None:
        return self._pipe_error

    @property
    def pipeline(self) -> Any:
        return self._pipe

    def queued(self) -> int:
        return self._queue.qsize()

    def submit(self, canvas: Canvas, settings: JobSettings) -> Job:
        job = Job(id=uuid.uuid4().hex[:16], settings=settings, canvas=canvas, created=time.time())
        with self._lock:
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                raise QueueFull(f"the queue is full ({self._queue.maxsize} jobs waiting); try again later") from None
            self._jobs[job.id] = job
            self._emit(job, "queued", position=self._queue.qsize())
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def history(self) -> list[dict[str, Any]]:
        """Every job, newest first."""
        with self._lock:
            jobs = sorted(self._jobs.values(), key=lambda j: j.created, reverse=True)
            return [j.summary() for j in jobs]

    def cancel(self, job_id: str) -> Job | None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.status in TERMINAL:
                return job
            job.cancel.set()
            if job.status == "queued":
                # The worker skips it when it comes up; report it cancelled at once.
                self._finish(job, "cancelled")
            return job

    def events(self, job_id: str, since: int = 0, heartbeat: float = 15.0) -> Iterator[dict[str, Any] | None]:
        """Yield the job's events from index `since` as they come; None as a heartbeat; ends after the last."""
        index = since
        while not self._stop.is_set():
            with self._changed:
                job = self._jobs.get(job_id)
                if job is None:
                    return
                if index >= len(job.events) and job.status not in TERMINAL:
                    self._changed.wait(timeout=heartbeat)
                pending = job.events[index:]
                done = job.status in TERMINAL
            if not pending and not done:
                yield None
            for event in pending:
                index += 1
                yield event
            if done and index >= len(job.events):
                return

    def result_path(self, job_id: str) -> Path:
        return self.jobs_dir / job_id / "result.png"

    def bundle_path(self, job_id: str) -> Path:
        return self.jobs_dir / job_id / "canvas.lcz"

    def shutdown(self) -> None:
        self._stop.set()
        with self._lock:
            for job in self._jobs.values():
                job.cancel.set()
            self._changed.notify_all()

    # -- worker --------------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._pipe = self._load_pipeline()
        except Exception as exc:  # reported by /api/health and on every job
            self._pipe_error = f"{type(exc).__name__}: {exc}"
        while not self._stop.is_set():
            try:
                job = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            if job.cancel.is_set():
                continue
            self._execute(job)

    def _execute(self, job: Job) -> None:
        if self._pipe is None:
            with self._lock:
                job.error = f"the model could not be loaded ({self._pipe_error})"
                self._finish(job, "failed")
            return
        from ..pipeline import skipped_steps

        pipe, s = self._pipe, job.settings
        with self._lock:
            job.status = "running"
            steps = s.steps or pipe.default_steps
            # image-to-image runs only its share of the steps; refine ignores strength
            job.total = steps if s.mode == "refine" else steps - skipped_steps(steps, s.strength)
            self._emit(job, "started", total=job.total)
        grid = job.canvas.grid

        def progress(event: Any) -> None:
            if job.cancel.is_set():
                raise Cancelled
            preview = None
            if (self.preview_every and event.denoised is not None and event.step % self.preview_every == 0
                    and event.step < event.total):
                preview = _png_data_url(pipe.preview(event.denoised, grid), max_side=256)
            with self._lock:
                job.step = event.step
                self._emit(job, "step", step=event.step, total=event.total, preview=preview)

        try:
            if s.mode == "refine":
                image, stats = self._run_refine(job, progress)
            else:
                result = pipe.generate(job.canvas, prompt=s.prompt, num_inference_steps=s.steps,
                                       guidance_scale=s.guidance, seed=s.seed, mode=s.mode, callback=progress,
                                       hard_lock=s.hard_lock, strength=s.strength)
                image = result.image
                stats = {"tokens": result.plan.total, "noisy": result.plan.noisy, "mode": result.plan.mode,
                         "hard_locked": result.hard_locked,
                         "seconds": {k: round(v, 3) for k, v in result.seconds.items()}}
            folder = self.jobs_dir / job.id
            folder.mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            write_atomic(folder / "result.png", buf.getvalue())
            write_atomic(folder / "canvas.lcz", save_bundle_bytes(job.canvas))
            with self._lock:
                job.stats = stats
                job.finished = time.time()
                # Written before the job is reported done: a restart finds it.
                write_atomic(folder / "job.json", json.dumps(job.summary() | {"status": "done"}).encode())
                self._finish(job, "done")
        except Cancelled:
            with self._lock:
                self._finish(job, "cancelled")
        except LayerComposerError as exc:
            with self._lock:
                job.error = str(exc)
                self._finish(job, "failed")
        except Exception as exc:  # a bug must not kill the worker; the job carries the message
            with self._lock:
                job.error = f"{type(exc).__name__}: {exc}"
                self._finish(job, "failed")

    def _run_refine(self, job: Job, progress: Callable[[Any], None]) -> tuple[Any, dict[str, Any]]:
        """A refine job: the canvas flattened and handed to the refine engine (loaded on first use)."""
        import time as _time

        from ..refine import RefineSettings

        if self._load_refine is None:
            raise LayerComposerError("this server has no refine model (start it with --refine-model)")
        if self._refine is None:
            self._refine = self._load_refine()
        s = job.settings

        def quiet(event: Any) -> None:  # no previews: the engine's latents are not ours to decode
            event.denoised = None
            progress(event)

        # An editing model takes an instruction; our collage model takes the prompt (as `generate` does).
        text = s.instruction if self._refine.backend in ("kontext", "qwen") else s.prompt
        t0 = _time.perf_counter()
        image = self._refine(job.canvas, RefineSettings(instruction=text, steps=s.steps or 28, guidance=s.guidance,
                                                        seed=s.seed), callback=quiet)
        return image, {"mode": "refine", "backend": self._refine.backend, "tokens": 0, "noisy": 0,
                       "seconds": {"sample": round(_time.perf_counter() - t0, 3)}}

    # -- internals (call with the lock held) ---------------------------------------------------------------

    def _emit(self, job: Job, kind: str, **data: Any) -> None:
        job.events.append({"id": len(job.events), "type": kind, "job": job.id, **data})
        self._changed.notify_all()

    def _finish(self, job: Job, status: str) -> None:
        job.status = status
        job.finished = job.finished or time.time()
        job.canvas = job.canvas if status != "done" else None  # the bundle on disk holds it now
        self._emit(job, status, **job.summary())

    def _load_history(self) -> None:
        for path in sorted(self.jobs_dir.glob("*/job.json")):
            try:
                doc = json.loads(path.read_text())
                job = Job(id=doc["id"], settings=JobSettings(**doc["settings"]), canvas=None,
                          created=float(doc["created"]), status="done", step=doc.get("step", 0),
                          total=doc.get("total", 0), finished=doc.get("finished"), stats=doc.get("stats", {}))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # a damaged record is skipped, never fatal
            if self.result_path(job.id).is_file():
                job.events.append({"id": 0, "type": "done", "job": job.id, **job.summary()})
                self._jobs[job.id] = job


def _png_data_url(image: Any, max_side: int = 256) -> str:
    if max(image.size) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
