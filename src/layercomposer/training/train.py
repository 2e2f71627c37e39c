"""The trainer: locking-aware flow matching on a FLUX transformer, full or LoRA, through accelerate.

    layercomposer train --data scenes/ --output runs/demo --model demo-base --vae runs/vae/vae --steps 20000
    accelerate launch -m layercomposer.training.train --data ... --output ...      # many GPUs / nodes

Each step's data, noise and timesteps come from RNGs seeded by (seed, step, micro-step, process), so a
resumed run repeats what an uninterrupted run does (the same data, noise and times; losses equal up to
float rounding, about 1 ulp, where two uninterrupted runs are bit-identical); checkpoints hold the model,
optimizer and scheduler (accelerate's `save_state`).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..conditioning import TokenRules
from ..data.canvas_sampling import TrainingSample, sample_training_canvas
from ..data.scenes import SceneSet
from ..errors import LayerComposerError
from ..flow import sample_logit_normal
from ..models.attention import use_padded_batch_attention, use_stock_attention
from ..models.denoiser import unwrap
from ..models.text import TextEmbeddings
from .batch import Batch, EncodedSample, SampleEncoder, collate, flow_loss, guidance_vector
from .config import TrainConfig, add_train_arguments, lr_factor, train_config_from_args
from .ema import EMA_FILE, EmaWeights, copy_into
from .metrics import MetricsLog, plot_loss_curve, read_metrics
from .pool import PoolCache, pool_fingerprint


def run_rules(base: TokenRules, merge_locked: bool | None, prune: str | None) -> TokenRules:
    """The token rules a run trains under: the base model's own, except where the run chose (None: inherit)."""
    return TokenRules(base.merge_locked if merge_locked is None else bool(merge_locked),
                      base.prune if prune is None else prune)  # type: ignore[arg-type]


def trained_sizes(data: str | Path, resolution: int | None, base: list[tuple[int, int]] | None = None,
                  scenes: int = 200) -> list[tuple[int, int]]:
    """The canvas sizes a run trains at, with those of the model it starts from: `resolution` square, or the
    picture sizes of (up to `scenes` of) the training scenes, read from the files' headers."""
    from PIL import Image

    sizes = set(base or [])
    if resolution:
        sizes.add((int(resolution), int(resolution)))
    else:
        for scene in SceneSet.load(data).scenes[:scenes]:
            for image in scene.images:
                with Image.open(image.file) as im:
                    sizes.add(im.size)
    return sorted(sizes)


LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
"""The attention projections of FLUX's double and single blocks (LoRA targets, as in the paper)."""


# ----------------------------------------------------------------------------------------------------------
# The run


class Trainer:
    """Holds the models, data and optimizer of one run; `step()` is one optimizer step."""

    def __init__(self, cfg: TrainConfig) -> None:
        from accelerate import Accelerator
        from diffusers import AutoencoderKL

        from ..pipeline import LayerComposerPipeline

        self.cfg = cfg
        self.accelerator = Accelerator(mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum)
        torch.manual_seed(cfg.seed)

        # 1. Models: a registered config starts from random weights (seeded); a directory from its weights.
        from ..models.lowmem import LoadOptions
        from ..models.registry import REGISTRY

        load = LoadOptions(quantize=cfg.quantize, gguf=cfg.gguf)
        if cfg.model in REGISTRY:
            if load.active:
                raise LayerComposerError("--quantize / --gguf: need a model folder (a FLUX.1 Kontext or FLUX.2 "
                                         f"[klein] base), not the registered config {cfg.model!r}")
            pipe = LayerComposerPipeline.from_config(REGISTRY[cfg.model], seed=cfg.seed)
        else:
            pipe = LayerComposerPipeline.from_pretrained(cfg.model, load=load)
        if cfg.vae:
            pipe.vae = AutoencoderKL.from_pretrained(cfg.vae, use_safetensors=True, torch_dtype=torch.float32)
            pipe.vae.eval().requires_grad_(False)
        pipe.conditioning.rules = run_rules(pipe.rules, cfg.merge_locked, cfg.prune)
        self.rules = pipe.rules
        self.merge_locked = self.rules.merge_locked
        self.pipe = pipe
        self.quantized_base = load.active
        transformer = pipe.transformer
        if getattr(transformer, "layered_klein", False) and cfg.lora_rank < 1:
            raise LayerComposerError("a FLUX.2 [klein] base trains a LoRA (--lora-rank R); its full weights are not "
                                     "exported in our format")
        use_padded_batch_attention(transformer)
        from ..models.lowmem import set_attention_backend

        set_attention_backend(transformer, cfg.attention_backend)
        if cfg.lora_rank > 0:
            from peft import LoraConfig

            transformer.add_adapter(LoraConfig(
                r=cfg.lora_rank, lora_alpha=cfg.lora_alpha or cfg.lora_rank, init_lora_weights="gaussian",
                # FLUX.2 [klein] names its own (models/klein.py: the single blocks' fused projections too).
                target_modules=getattr(transformer, "lora_targets", list(LORA_TARGETS)),
            ))
        else:
            transformer.requires_grad_(True)
        if cfg.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        transformer.train()
        params = [p for p in transformer.parameters() if p.requires_grad]
        text_model = getattr(pipe.text_encoder, "model", None)
        if cfg.train_text_encoder:
            if text_model is None:
                raise LayerComposerError("--train-text-encoder: only the demo's CLIP text encoder can be trained")
            text_model.requires_grad_(True).train()
            params += list(text_model.parameters())
        self.trainable = sum(p.numel() for p in params)

        # 2. Optimizer: AdamW, linear warm-up then constant (the paper's constant learning rate) or a decay.
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        # accelerate steps a prepared scheduler once per process at every optimizer step (it assumes the steps
        # were counted for one process); --steps and --warmup count optimizer steps, so divide that back out.
        per_step = self.accelerator.num_processes
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(
            s // per_step, warmup=cfg.warmup, steps=cfg.steps, schedule=cfg.lr_schedule))
        prepared = self.accelerator.prepare(transformer, optimizer, schedule,
                                            *([text_model] if cfg.train_text_encoder else []))
        self.transformer, self.optimizer, self.schedule = prepared[:3]
        if cfg.compile:
            # Condition tokens differ in number from batch to batch: compile for dynamic shapes at once.
            self.transformer = torch.compile(self.transformer, dynamic=True)
        self.text_model = prepared[3] if cfg.train_text_encoder else None
        device = self.accelerator.device
        pipe.vae.to(device)
        if not cfg.train_text_encoder:
            pipe.text_encoder.to(device)

        # 3. Data: scenes, sampled per step from seeded RNGs; VAE latents cached by content.
        self.scenes = SceneSet.load(cfg.data, cfg.resolution)
        # With a sample pool, whole encoded samples are kept, so the per-layer caches need only be small.
        small = 4096 if cfg.sample_pool else 65536
        self.encoder = SampleEncoder(pipe._encode_pixels, mode=cfg.mode,  # type: ignore[arg-type]
                                     max_cached_layers=small, max_cached_targets=small,
                                     rules=self.rules)
        self._pool: dict[int, EncodedSample] = {}
        self.pool_cache: PoolCache | None = None
        if cfg.sample_pool and cfg.pool_cache:
            self.pool_cache = PoolCache(cfg.pool_cache, pool_fingerprint(
                self.scenes, pipe.vae, seed=cfg.seed, mode=cfg.mode, resolution=cfg.resolution,
                sampling=cfg.sampling, rules=self.rules))
        self.pool_counts = {"encoded": 0, "loaded": 0}
        self.eval_batches = self._eval_batches() if cfg.eval_data else []
        self._text_cache: dict[str, TextEmbeddings] = {}
        self.step_index = 0
        # 4. Exponential moving average of the trained weights (what is evaluated and exported when on).
        self.ema = EmaWeights(self._trained_modules(), cfg.ema_decay) if cfg.ema_decay > 0 else None

    # -- data ----------------------------------------------------------------------------------------------

    def make_batch(self, step: int, micro: int) -> Batch:
        """The micro-batch of (step, micro) for this process: same seeds, same batch, on any restart.

        Without a pool every draw is a fresh canvas. With `--sample-pool P`, draw k picks sample u in [0, P),
        a canvas made from its own seeds (seed, u) whatever the step, encoded once and kept: each is seen
        about steps * batch / P times with fresh noise and time, and the VAE work shrinks by that factor.
        """
        rank = self.accelerator.process_index
        draws: list[tuple[int | TrainingSample, bool]] = []
        for k in range(self.cfg.batch_size):
            rng = np.random.default_rng([self.cfg.seed, step, micro, rank, k])
            if self.cfg.sample_pool:
                draws.append((int(rng.integers(self.cfg.sample_pool)), bool(rng.random() < self.cfg.prompt_dropout)))
            else:
                scene = self.scenes.scenes[int(rng.integers(len(self.scenes)))]
                sample = sample_training_canvas(scene, rng, self.cfg.sampling)
                draws.append((sample, bool(rng.random() < self.cfg.prompt_dropout)))
        if not self.cfg.sample_pool:
            samples = [sample for sample, _ in draws]  # type: ignore[misc]
            for sample, drop in draws:
                if drop:
                    sample.canvas.prompt = ""  # type: ignore[union-attr]
            return collate(self.encoder.encode_many(samples))  # type: ignore[arg-type]
        missing = sorted({u for u, _ in draws if u not in self._pool})  # type: ignore[misc]
        if self.pool_cache is not None:
            for u in missing:
                stored = self.pool_cache.load(u)
                if stored is not None and stored.subject is None and self.cfg.subject_loss_weight != 1.0:
                    stored = None  # written before subject cells were recorded: encode it again, with them
                if stored is not None:
                    self._pool[u] = stored
                    self.pool_counts["loaded"] += 1
            missing = [u for u in missing if u not in self._pool]
        for u, encoded in zip(missing, self.encoder.encode_many([self.pool_sample(u) for u in missing]),
                              strict=True):
            self._pool[u] = encoded
            self.pool_counts["encoded"] += 1
            if self.pool_cache is not None:
                self.pool_cache.save(u, encoded)
        return collate([replace(self._pool[u], prompt="") if drop else self._pool[u]  # type: ignore[index]
                        for u, drop in draws])

    def pool_sample(self, u: int) -> TrainingSample:
        """Sample u of the pool: a canvas made from the seeds (seed, u) only."""
        rng = np.random.default_rng([self.cfg.seed, u])
        scene = self.scenes.scenes[int(rng.integers(len(self.scenes)))]
        return sample_training_canvas(scene, rng, self.cfg.sampling)

    def held_out_samples(self) -> list[TrainingSample]:
        """The fixed held-out canvases of the eval loss (seeded by their index; the paper's sampling, so
        unlocked subjects always come from other pictures whatever the run trains with)."""
        held_out = SceneSet.load(self.cfg.eval_data, self.cfg.resolution)
        paper = replace(self.cfg.sampling, p_aligned_unlocked=0.0)
        return [sample_training_canvas(held_out.scenes[k % len(held_out)],
                                       np.random.default_rng([10_000 + self.cfg.seed, k]), paper)
                for k in range(self.cfg.eval_samples)]

    def _eval_batches(self) -> list[Batch]:
        samples, size = self.held_out_samples(), self.cfg.batch_size
        return [collate(self.encoder.encode_many(samples[i:i + size])) for i in range(0, len(samples), size)]

    def _trained_modules(self) -> dict[str, torch.nn.Module]:
        """The modules being trained, unwrapped, by the prefix their weights have in the EMA file."""
        modules = {"transformer": unwrap(self.accelerator.unwrap_model(self.transformer))}
        if self.text_model is not None:
            modules["text_encoder"] = self.accelerator.unwrap_model(self.text_model)
        return modules

    def text(self, prompts: list[str]) -> TextEmbeddings:
        te = self.pipe.text_encoder
        device = self.accelerator.device
        if self.text_model is not None:
            return te.embed(self.text_model, te.tokenize(prompts).to(device))
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if missing:
            emb = te.encode(missing)  # any TextEncoder (CLIP, or FLUX's CLIP + T5): frozen, cached by prompt
            for i, p in enumerate(missing):
                self._text_cache[p] = TextEmbeddings(emb.sequence[i:i + 1], emb.pooled[i:i + 1])
        return TextEmbeddings(torch.cat([self._text_cache[p].sequence for p in prompts]),
                              torch.cat([self._text_cache[p].pooled for p in prompts]))

    def noise_and_time(self, batch: Batch, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        # step = -1 marks the fixed evaluation noise; SeedSequence needs non-negative entries.
        seq = np.random.SeedSequence([self.cfg.seed, step + 1, micro, self.accelerator.process_index])
        gen = torch.Generator().manual_seed(int(seq.generate_state(1, np.uint64)[0] >> np.uint64(1)))
        t = sample_logit_normal(batch.size, gen)
        noise = torch.randn(batch.x0.shape, generator=gen)
        return noise, t

    # -- steps ---------------------------------------------------------------------------------------------

    def loss_of(self, batch: Batch, step: int, micro: int, weighted: bool = True) -> torch.Tensor:
        """The loss of a micro-batch at the noise and times of (step, micro); `weighted=False` takes the plain
        mean over tokens whatever `--subject-loss-weight` says (the held-out loss)."""
        device = self.accelerator.device
        noise, t = self.noise_and_time(batch, step, micro)
        batch = batch.to(device)
        with self.accelerator.autocast():
            loss, _ = flow_loss(self.transformer, batch, self.text(batch.prompts), t.to(device), noise.to(device),
                                guidance_vector(self.transformer, batch.size, self.cfg.guidance, device),
                                batch.token_weights(self.cfg.subject_loss_weight) if weighted else None)
        return loss

    def step(self) -> float:
        """One optimizer step (grad_accum micro-batches); returns the mean loss."""
        step, losses = self.step_index, []
        for micro in range(self.cfg.grad_accum):
            batch = self.make_batch(step, micro)
            with self.accelerator.accumulate(self.transformer):
                loss = self.loss_of(batch, step, micro)
                self.accelerator.backward(loss)
                if self.accelerator.sync_gradients and self.cfg.max_grad_norm > 0:
                    self.accelerator.clip_grad_norm_(self.optimizer.param_groups[0]["params"], self.cfg.max_grad_norm)
                self.optimizer.step()
                self.schedule.step()
                self.optimizer.zero_grad(set_to_none=True)
                if self.ema is not None and self.accelerator.sync_gradients:
                    self.ema.update()
            # The logged loss is the mean over processes, so a multi-GPU log reads like a single-GPU one.
            losses.append(self.accelerator.reduce(loss.detach().float(), reduction="mean").item())
        self.step_index += 1
        return float(np.mean(losses))

    @torch.no_grad()
    def eval_loss(self) -> float:
        """Mean loss on the fixed held-out batches, at fixed noise and times (of the EMA weights when kept)."""
        self.transformer.eval()
        with self.ema.applied() if self.ema is not None else _nothing():
            losses = [self.loss_of(batch, -1, i, weighted=False).item() for i, batch in enumerate(self.eval_batches)]
        self.transformer.train()
        return float(np.mean(losses))

    # -- checkpoints ---------------------------------------------------------------------------------------

    @property
    def checkpoint_root(self) -> Path:
        return self.cfg.run / "checkpoints"

    def save_checkpoint(self) -> Path:
        path = self.checkpoint_root / f"step-{self.step_index:07d}"
        # safetensors cannot hold a quantized base's tensor subclasses (torchao, GGUF): pickle those checkpoints.
        self.accelerator.save_state(str(path), safe_serialization=not self.quantized_base)
        if self.accelerator.is_main_process:
            if self.ema is not None:
                self.ema.save(path / EMA_FILE)
            # Written last: a folder with trainer_state.json is a complete checkpoint.
            (path / "trainer_state.json").write_text(json.dumps({"step": self.step_index,
                                                                 "processes": self.accelerator.num_processes}))
            for old in sorted(self.checkpoint_root.glob("step-*"))[: -self.cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        return path

    def resume(self) -> int:
        """Load the newest complete checkpoint, if any; returns the step to continue from."""
        done = [p for p in sorted(self.checkpoint_root.glob("step-*")) if (p / "trainer_state.json").is_file()]
        if not done:
            return 0
        state = json.loads((done[-1] / "trainer_state.json").read_text())
        processes = self.accelerator.num_processes
        if state.get("processes", processes) != processes:  # older checkpoints do not say: not checked
            raise LayerComposerError(
                f"{done[-1]} was written by {state['processes']} processes, this run has {processes}: resume it "
                f"with {state['processes']} (each process draws its own samples, and the learning rate counts them)")
        self.accelerator.load_state(str(done[-1]))
        if self.ema is not None:
            if not (done[-1] / EMA_FILE).is_file():
                raise LayerComposerError(f"{done[-1]}: no {EMA_FILE} to resume --ema-decay from (the run was "
                                         "started without it)")
            self.ema.load(done[-1] / EMA_FILE)
        self.step_index = state["step"]
        return self.step_index

    def export(self) -> Path:
        """The final model (its EMA weights when kept): a full pipeline folder, or a LoRA file."""
        with self.ema.applied() if self.ema is not None else _nothing():
            return self._export()

    def _export(self) -> Path:
        transformer = unwrap(self.accelerator.unwrap_model(self.transformer))
        if self.cfg.lora_rank > 0:
            import diffusers
            from peft.utils import get_peft_model_state_dict

            out = self.cfg.run / "lora"
            # The file diffusers' own pipeline of the base loads with `load_lora_weights`.
            pipeline = "Flux2KleinPipeline" if getattr(transformer, "layered_klein", False) else "FluxKontextPipeline"
            getattr(diffusers, pipeline).save_lora_weights(
                out, transformer_lora_layers=get_peft_model_state_dict(transformer), safe_serialization=True
            )
            return out
        from ..pipeline import LayerComposerPipeline

        te = self.pipe.text_encoder
        if self.text_model is not None:
            te.model = self.accelerator.unwrap_model(self.text_model)
        use_stock_attention(transformer)  # inference (batch 1) uses diffusers' stock processor
        pipe = LayerComposerPipeline(transformer, self.pipe.vae, te, self.pipe.schedule, self.pipe.guidance_scale,
                                     self.pipe.default_steps, name=self.pipe.name, rules=self.rules)
        pipe._trained_sizes = trained_sizes(self.cfg.data, self.cfg.resolution, self.pipe.trained_sizes)
        from diffusers.utils import logging as diffusers_logging

        dtype = getattr(torch, self.cfg.export_dtype)
        level = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()  # casting a whole model on purpose: no per-module warning
        try:
            pipe.to("cpu", dtype)
            out = pipe.save_pretrained(self.cfg.run / "model")
            pipe.to(self.accelerator.device, torch.float32)
        finally:
            diffusers_logging.set_verbosity(level)
        use_padded_batch_attention(transformer)
        return out


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def train(cfg: TrainConfig, progress: bool = True) -> Trainer:
    """Run (or resume) a training run to `cfg.steps`; writes metrics, loss curve, checkpoints, final model."""
    from tqdm import tqdm

    trainer = Trainer(cfg)
    acc = trainer.accelerator
    start = trainer.resume()
    run = cfg.run
    if acc.is_main_process:
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.json").write_text(json.dumps(asdict(cfg), indent=2, default=str) + "\n")
    log = MetricsLog(run / "metrics.jsonl", resume_step=start) if acc.is_main_process else None
    bar = tqdm(total=cfg.steps, initial=start, desc="training", unit="step", file=sys.stderr,
               disable=not (progress and acc.is_main_process), dynamic_ncols=True)
    t_last, window = time.perf_counter(), []
    while trainer.step_index < cfg.steps:
        loss = trainer.step()
        if not math.isfinite(loss):
            raise LayerComposerError(f"loss became {loss} at step {trainer.step_index}; lower --lr")
        window.append(loss)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")
        step = trainer.step_index
        if log is not None and (step % cfg.log_every == 0 or step == cfg.steps):
            now = time.perf_counter()
            record: dict[str, Any] = {"step": step, "loss": float(np.mean(window)),
                                      "lr": trainer.schedule.get_last_lr()[0],
                                      "seconds_per_step": (now - t_last) / len(window)}
            if cfg.sample_pool:  # how full the pool is, and where its canvases came from (this process)
                record["pool_encoded"] = trainer.pool_counts["encoded"]
                record["pool_loaded"] = trainer.pool_counts["loaded"]
            if trainer.eval_batches and (step % cfg.eval_every == 0 or step == cfg.steps):
                record["eval_loss"] = trainer.eval_loss()
            log.write(record)
            t_last, window = now, []
        if step % cfg.save_every == 0 or step == cfg.steps:
            trainer.save_checkpoint()
            if acc.is_main_process:
                plot_loss_curve(read_metrics(run / "metrics.jsonl"), run / "loss.png",
                                title=f"{cfg.mode} training loss ({run.name})")
    bar.close()
    acc.wait_for_everyone()
    if acc.is_main_process:
        trainer.export()
        plot_loss_curve(read_metrics(run / "metrics.jsonl"), run / "loss.png",
                        title=f"{cfg.mode} training loss ({run.name})")
    return trainer


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m layercomposer.training.train` (and `accelerate launch -m ...`)."""
    parser = argparse.ArgumentParser(prog="layercomposer train", description=__doc__.split("\n\n")[0])
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    try:
        train(train_config_from_args(args))
    except LayerComposerError as exc:
        print(f"layercomposer train: error: {exc}", file=sys.stderr)
        return 2
    return 0



def export_checkpoint(run: str | Path, out: str | Path, step: int | None = None, dtype: str = "float16",
                      name: str | None = None, guidance_scale: float | None = None, ema: bool = True,
                      vae: str | Path | None = None) -> Path:
    """Turn one checkpoint of a full-training run into a pipeline folder (what `--model DIR` loads).

    Any checkpoint, not only the last: pick the step whose samples or eval loss are best. A run with
    `--ema-decay` exports its averaged weights unless `ema` is False. `vae` replaces the run's VAE (a
    decoder fine-tuned afterwards with `train-vae --decoder-only`, whose latent space is the run's). The
    folder is written beside `out` and renamed into place, so an interrupted export leaves nothing
    half-written.
    """
    from diffusers import AutoencoderKL
    from safetensors.torch import load_file

    from ..models.registry import REGISTRY
    from ..pipeline import LayerComposerPipeline

    run, out = Path(run), Path(out)
    cfg_path = run / "config.json"
    if not cfg_path.is_file():
        raise LayerComposerError(f"{run}: not a training run (config.json missing)")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("lora_rank", 0) > 0:
        raise LayerComposerError(f"{run}: a LoRA run; its LoRA file is exported to {run / 'lora'} at the end")
    done = {json.loads((p / "trainer_state.json").read_text())["step"]: p
            for p in sorted((run / "checkpoints").glob("step-*")) if (p / "trainer_state.json").is_file()}
    if not done:
        raise LayerComposerError(f"{run}: no complete checkpoint in {run / 'checkpoints'}")
    if step is None:
        step = max(done)
    if step not in done:
        raise LayerComposerError(f"{run}: no checkpoint at step {step} (have {', '.join(map(str, sorted(done)))})")
    if dtype not in ("float32", "float16", "bfloat16"):
        raise LayerComposerError(f"dtype: float32, float16 or bfloat16, got {dtype!r}")
    if out.exists():
        raise LayerComposerError(f"{out}: already exists; choose a new folder")
    ckpt = done[step]

    model = cfg["model"]
    pipe = (LayerComposerPipeline.from_config(REGISTRY[model]) if model in REGISTRY
            else LayerComposerPipeline.from_pretrained(model))
    vae_dir = vae or cfg.get("vae")
    if vae_dir:
        if not (Path(vae_dir) / "config.json").is_file():
            raise LayerComposerError(f"--vae {vae_dir}: not an AutoencoderKL folder (config.json missing)")
        pipe.vae = AutoencoderKL.from_pretrained(vae_dir, use_safetensors=True, torch_dtype=torch.float32).eval()
    pipe.transformer.load_state_dict(load_file(ckpt / "model.safetensors"))
    if cfg.get("train_text_encoder"):
        pipe.text_encoder.model.load_state_dict(load_file(ckpt / "model_1.safetensors"))
    if ema and cfg.get("ema_decay", 0) > 0:
        if not (ckpt / EMA_FILE).is_file():
            raise LayerComposerError(f"{ckpt}: no {EMA_FILE} (export the raw weights with --no-ema)")
        modules = {"transformer": pipe.transformer}
        if getattr(pipe.text_encoder, "model", None) is not None:
            modules["text_encoder"] = pipe.text_encoder.model
        copy_into(modules, load_file(ckpt / EMA_FILE))
    pipe.conditioning.rules = run_rules(pipe.rules, cfg.get("merge_locked"), cfg.get("prune"))
    pipe._trained_sizes = trained_sizes(cfg["data"], cfg.get("resolution"), pipe.trained_sizes)
    pipe.name = name or out.name
    if guidance_scale is not None:
        pipe.guidance_scale = float(guidance_scale)  # the default `generate` uses
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # casting a whole model on purpose: no per-module warning
    try:
        pipe.to("cpu", getattr(torch, dtype))
    finally:
        diffusers_logging.set_verbosity(level)
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        pipe.save_pretrained(tmp)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


if __name__ == "__main__":
    sys.exit(main())
