"""Generation jobs for the editor: one worker runs them in order from a bounded queue.

A job's result (picture, canvas bundle, settings) is written to the outputs folder *before* the job is
reported done, so a reload of the page or a restart of the server loses no finished result. Every job has a
record (`job.json`) from the moment it is queued: a job that a crash or SIGKILL interrupts is found on the
next start and reported failed ("interrupted"), and half-written `.part` files are removed then.

Progress is kept as an append-only list of events per job that any number of readers stream from
(server-sent events). Memory holds the active jobs and a window of the newest `MEMORY_WINDOW` finished ones
(of which only the newest `FULL_EVENTS_WINDOW` keep every event, the others their last); older ones are read
back from their records on disk.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import re
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..canvas import Canvas, save_bundle_bytes, write_atomic
from ..errors import LayerComposerError

JOB_ID_PATTERN = r"[0-9a-f]{16}"
"""A job id, whole (match it with `re.fullmatch`)."""
TERMINAL = ("done", "failed", "cancelled")
MEMORY_WINDOW = 200
"""Finished jobs kept in memory (newest first); the rest are read from disk when asked for."""
FULL_EVENTS_WINDOW = 8
"""Finished jobs that keep every event (with previews); older ones keep only their last."""
INTERRUPTED = "interrupted: the server stopped before this job finished"


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
    first_event: int = 0
    """Id of `events[0]`: a finished job keeps only its last event."""
    cancel: threading.Event = field(default_factory=threading.Event)
    png_settings: dict[str, Any] = field(default_factory=dict)
    """What the result's PNG records (the CLI's `layercomposer` text chunk)."""

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
                 preview_every: int = 4, load_refine: Callable[[], Any] | None = None,
                 model_names: tuple[str | None, str | None] = (None, None)) -> None:
        self.outputs = outputs
        self.model_names = model_names
        """(model, refine model) as the user named them: written into each result's PNG settings."""
        self.jobs_dir = outputs / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.preview_every = preview_every
        self._load_pipeline = load_pipeline
        self._load_refine = load_refine
        self._refine: Any = None
        self._pipe: Any = None
        self._pipe_error: str | None = None
        self.max_queue = max_queue
        self._pending: deque[Job] = deque()  # queued jobs, in order; a cancelled one leaves at once
        self._jobs: dict[str, Job] = {}  # queued and running jobs
        self._finished: OrderedDict[str, Job] = OrderedDict()  # the newest finished jobs, oldest first
        self._full_events: deque[str] = deque()  # finished jobs that still hold every event
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._clean_partial_files()
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
        """Jobs waiting (cancelled ones do not count: they leave the queue at once)."""
        return len(self._pending)

    def submit(self, canvas: Canvas, settings: JobSettings) -> Job:
        job = Job(id=uuid.uuid4().hex[:16], settings=settings, canvas=canvas, created=time.time())
        with self._lock:
            if len(self._pending) >= self.max_queue:
                raise QueueFull(f"the queue is full ({self.max_queue} jobs waiting); try again later")
            self._record(job)  # before it can run: a crash from here on leaves a record
            self._pending.append(job)
            self._jobs[job.id] = job
            self._emit(job, "queued", position=len(self._pending))
        return job

    def get(self, job_id: str) -> Job | None:
        """A job in memory, or a finished one read back from its record; None when there is none."""
        if not re.fullmatch(JOB_ID_PATTERN, job_id):
            return None
        with self._lock:
            job = self._jobs.get(job_id) or self._finished.get(job_id)
        return job if job is not None else self._read_record(self.jobs_dir / job_id / "job.json")

    def history(self) -> list[dict[str, Any]]:
        """The active jobs and the newest `MEMORY_WINDOW` finished ones, newest first."""
        with self._lock:
            jobs = sorted([*self._jobs.values(), *self._finished.values()], key=lambda j: j.created, reverse=True)
            return [j.summary() for j in jobs]

    def cancel(self, job_id: str) -> Job | None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return self._finished.get(job_id) or self._read_record(self.jobs_dir / job_id / "job.json")
            job.cancel.set()
            if job.status == "queued":
                # Out of the queue at once, so its slot is free for a new job; reported cancelled now.
                self._pending.remove(job)
                self._finish(job, "cancelled")
            return job

    def _snapshot(self, job_id: str, index: int) -> tuple[bool, int, list[dict[str, Any]], bool]:
        """(found, number of the first event returned, events from number `index` on, finished), under the lock."""
        with self._lock:
            job = self._jobs.get(job_id) or self._finished.get(job_id)
            if job is None:
                return False, index, [], True
            start = max(index, job.first_event)
            return True, start, job.events[start - job.first_event:], job.status in TERMINAL

    async def stream(self, job_id: str, since: int = 0, heartbeat: float = 15.0,
                     poll: float = 0.1) -> AsyncIterator[tuple[int, dict[str, Any]] | None]:
        """Yield (number, event) of the job's events from number `since` as they come, None as a heartbeat,
        and end after the last (or when the manager shuts down). Async: it polls, holding no worker thread
        per reader. A finished job has only its last event left, numbered as it was."""
        index = since
        quiet_since = time.monotonic()
        while not self._stop.is_set():
            found, start, pending, done = self._snapshot(job_id, index)
            if not found:
                job = self.get(job_id)
                if job is not None and job.events and index <= job.first_event:
                    yield job.first_event, job.events[-1]
                return
            for offset, event in enumerate(pending):
                index = start + offset + 1
                yield index - 1, event
            if done:
                return
            if pending:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= heartbeat:
                quiet_since = time.monotonic()
                yield None
            await asyncio.sleep(poll)

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
            with self._changed:
                if not self._pending:
                    self._changed.wait(timeout=0.5)
                    continue
                job = self._pending.popleft()
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

        def check() -> None:
            if job.cancel.is_set():
                raise Cancelled

        def progress(event: Any) -> None:
            check()
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
                                       hard_lock=s.hard_lock, strength=s.strength, check=check)
                image = result.image
                job.png_settings = {**result.settings(), "model": self.model_names[0]}
                stats = {"tokens": result.plan.total, "noisy": result.plan.noisy, "mode": result.plan.mode,
                         "hard_locked": result.hard_locked,
                         "seconds": {k: round(v, 3) for k, v in result.seconds.items()}}
            folder = self.jobs_dir / job.id
            folder.mkdir(parents=True, exist_ok=True)
            # The settings ride in the PNG's `layercomposer` text chunk, as in the CLI's pictures.
            write_atomic(folder / "result.png", _png_with_settings(image, {**job.png_settings, "job": job.id}))
            write_atomic(folder / "canvas.lcz", save_bundle_bytes(job.canvas))
            with self._lock:
                job.stats = stats
                job.finished = time.time()
                self._finish(job, "done")  # its record is written before anyone hears it is done
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
        job.png_settings = {"engine": "refine", "backend": self._refine.backend, "model": self.model_names[1],
                            "instruction": text, "seed": s.seed, "steps": s.steps or 28, "guidance": s.guidance}
        return image, {"mode": "refine", "backend": self._refine.backend, "tokens": 0, "noisy": 0,
                       "seconds": {"sample": round(_time.perf_counter() - t0, 3)}}

    # -- internals (call with the lock held) ---------------------------------------------------------------

    def _emit(self, job: Job, kind: str, **data: Any) -> None:
        # (a terminal event's data is the job's summary, whose "id" is the job id: the editor reads it)
        job.events.append({"id": job.first_event + len(job.events), "type": kind, "job": job.id, **data})
        self._changed.notify_all()

    def _finish(self, job: Job, status: str) -> None:
        job.status = status
        job.finished = job.finished or time.time()
        job.canvas = None  # the bundle on disk holds a done job's canvas; nothing needs a failed one's
        with contextlib.suppress(OSError):  # a full disk must not keep the job from finishing
            self._record(job)
        self._emit(job, status, **job.summary())
        # The job moves to the bounded window; the newest few keep every event (a reader that comes late
        # still sees the progress), older ones only their last (previews are what is large).
        self._jobs.pop(job.id, None)
        self._finished[job.id] = job
        self._full_events.append(job.id)
        while len(self._full_events) > FULL_EVENTS_WINDOW:
            old = self._finished.get(self._full_events.popleft())
            if old is not None:
                old.first_event, old.events = old.first_event + len(old.events) - 1, old.events[-1:]
        while len(self._finished) > MEMORY_WINDOW:
            self._finished.popitem(last=False)

    def _record(self, job: Job) -> None:
        folder = self.jobs_dir / job.id
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / "job.json", json.dumps(job.summary(), ensure_ascii=True).encode())

    def _read_record(self, path: Path) -> Job | None:
        """A finished job from its record; None when missing, damaged or not finished."""
        try:
            doc = json.loads(path.read_text())
            job = Job(id=doc["id"], settings=JobSettings(**doc["settings"]), canvas=None,
                      created=float(doc["created"]), status=doc.get("status", "done"), step=int(doc.get("step", 0)),
                      total=int(doc.get("total", 0)), error=doc.get("error"), finished=doc.get("finished"),
                      stats=doc.get("stats", {}))
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            return None  # a damaged record is skipped, never fatal
        if job.status not in TERMINAL or job.id != path.parent.name:
            return None
        if job.status == "done" and not self.result_path(job.id).is_file():
            return None
        job.events.append({"id": 0, "type": job.status, "job": job.id, **job.summary()})
        return job

    def _clean_partial_files(self) -> None:
        """Remove what an interrupted atomic write left (`.*.part`) under the outputs folder."""
        for path in self.outputs.rglob(".*.part"):
            try:
                if path.is_file() and not path.is_symlink():
                    path.unlink()
            except OSError:
                pass

    def _load_history(self) -> None:
        """Finished jobs into the memory window; jobs a crash interrupted are recorded as failed."""
        jobs = []
        for path in self.jobs_dir.glob("*/job.json"):
            try:
                doc = json.loads(path.read_text())
                if doc.get("status") in ("queued", "running") and doc.get("id") == path.parent.name:
                    doc.update(status="failed", error=INTERRUPTED, finished=doc.get("finished") or time.time())
                    write_atomic(path, json.dumps(doc, ensure_ascii=True).encode())
            except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
                continue
            job = self._read_record(path)
            if job is not None:
                jobs.append(job)
        jobs.sort(key=lambda j: j.created)
        for job in jobs[-MEMORY_WINDOW:]:
            self._finished[job.id] = job


def _png_with_settings(image: Any, settings: dict[str, Any]) -> bytes:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("layercomposer", json.dumps(settings, ensure_ascii=True))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def _png_data_url(image: Any, max_side: int = 256) -> str:
    if max(image.size) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
