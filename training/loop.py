"""The training loop shared by ``training/train.py`` (from scratch) and ``training/finetune.py`` (LoRA).

accelerate provides devices, data parallelism (``torchrun``/``accelerate launch`` run the same script),
bf16 autocast and the TensorBoard tracker; the loop itself keeps what must be exact for resuming:

- the data order is a pure function of (seed, global sample position): epoch permutations drawn from
  ``sample_seed(seed, epoch)``, rank ``r`` of ``W`` taking every W-th micro-batch, augmentation seeded per
  sample position. A resumed run therefore sees exactly the batches the uninterrupted run would have seen;
- the state saved every few minutes holds the *trainable* parameters only (a LoRA run does not rewrite a
  frozen 7B base), the optimizer, the scheduler, the RNG states and the step.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vla_ros.training.batching import ActionBatchCollator, sample_seed, step_metrics
from vla_ros.training.checkpoint import write_json

STATE_FILE = "trainer_state.json"


@dataclass
class LoopConfig:
    """Optimisation settings (CLI flags of train.py/finetune.py map onto these one to one)."""

    out: str
    steps: int = 1000  # optimizer steps
    batch_size: int = 8  # per process and micro-batch
    grad_accum: int = 1
    lr: float = 3e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 0
    schedule: str = "cosine"  # constant, linear, cosine (transformers.get_scheduler, with warm-up)
    max_grad_norm: float = 1.0  # 0 disables clipping
    seed: int = 0
    mixed_precision: str = "auto"  # auto (bf16 on CUDA, none on CPU), bf16, fp16, no
    save_every_steps: int = 0  # 0: only by time and at the end
    save_every_minutes: float = 5.0
    keep_checkpoints: int = 2
    log_every: int = 10
    max_minutes: float = 0.0  # stop (and save) after this wall time; 0: no limit
    num_workers: int = 0  # DataLoader worker processes building batches
    gradient_checkpointing: bool = False
    progress: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


class MicroBatches(Dataset):
    """Item ``k`` is this process's k-th micro-batch, already collated (lets DataLoader workers prefetch)."""

    def __init__(self, dataset: Sequence[Mapping], collator: ActionBatchCollator, batch_size: int, seed: int,
                 rank: int = 0, world: int = 1, total: int = 0):
        if len(dataset) == 0:
            raise ValueError("the dataset is empty")
        self.dataset, self.collator = dataset, collator
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        self.total = total
        self._perm: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.total

    def positions(self, k: int) -> list[int]:
        """Global sample positions of micro-batch k of this rank (micro-batches interleave across ranks)."""
        start = (k * self.world + self.rank) * self.batch_size
        return list(range(start, start + self.batch_size))

    def index_of(self, position: int) -> int:
        n = len(self.dataset)
        epoch = position // n
        if epoch not in self._perm:
            self._perm = {epoch: np.random.default_rng(sample_seed(self.seed, epoch)).permutation(n)}
        return int(self._perm[epoch][position % n])

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        pos = self.positions(k)
        samples = [self.dataset[self.index_of(p)] for p in pos]
        return self.collator(samples, seeds=[sample_seed(self.seed, 1_000_003, p) for p in pos])


def trainable_named(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def freeze_unused_parameters(model: torch.nn.Module, batch: Mapping[str, torch.Tensor], device) -> int:
    """Stop training parameters that get no gradient (the ViTs' last block and heads: OpenVLA's featurizer
    reads the second-to-last block). DDP would otherwise fail on them, or need ``find_unused_parameters``
    and its per-step graph walk. Found with one forward/backward on the first batch; returns how many."""
    model.to(device)
    out = model(**{k: v.to(device) for k, v in batch.items()})
    out.loss.backward()
    n = 0
    for p in model.parameters():
        if p.requires_grad and p.grad is None:
            p.requires_grad_(False)
            n += 1
        p.grad = None
    return n


class Trainer:
    """Runs ``cfg.steps`` optimizer steps of ``model`` on ``dataset``; resumable; exports via ``export``."""

    def __init__(self, model: torch.nn.Module, dataset: Sequence[Mapping], collator: ActionBatchCollator,
                 cfg: LoopConfig, export: Callable[[torch.nn.Module, Path], None] | None = None,
                 run_meta: dict | None = None):
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        self.cfg = cfg
        self.out = Path(cfg.out)
        mp = cfg.mixed_precision
        if mp == "auto":
            mp = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
        # step_scheduler_with_optimizer=False: accelerate would otherwise step the schedule once per process per
        # optimizer step (it assumes per-process epochs); our steps are global optimizer steps on every rank.
        self.accelerator = Accelerator(mixed_precision=mp, log_with="tensorboard", project_dir=str(self.out),
                                       step_scheduler_with_optimizer=False)
        set_seed(cfg.seed)
        self.export = export
        self.run_meta = run_meta or {}
        self.collator = collator
        self.dataset = dataset
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if self.accelerator.num_processes > 1:
            frozen = freeze_unused_parameters(model, collator([dataset[0]]), self.accelerator.device)
            self.accelerator.print(f"froze {frozen} parameter tensors that no forward pass uses")
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters")
        # no weight decay on biases, norms and LayerScale (1-D tensors), as usual for transformers
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                       {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=cfg.betas)
        from transformers import get_scheduler

        scheduler = get_scheduler(cfg.schedule, optimizer, num_warmup_steps=cfg.warmup_steps,
                                  num_training_steps=cfg.steps)
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(model, optimizer, scheduler)
        self.action_tokenizer = collator.action_tokenizer
        self.step = 0
        self.history: list[dict] = []

    # ------------------------------------------------------------------ state
    @property
    def checkpoints_dir(self) -> Path:
        return self.out / "checkpoints"

    def latest_checkpoint(self) -> Path | None:
        if not self.checkpoints_dir.is_dir():
            return None
        done = sorted(p for p in self.checkpoints_dir.glob("step_*") if (p / STATE_FILE).is_file())
        return done[-1] if done else None

    def save_state(self) -> Path:
        """Trainable weights, optimizer, scheduler, RNG, step -> ``checkpoints/step_<n>``; exports the policy."""
        acc = self.accelerator
        path = self.checkpoints_dir / f"step_{self.step:07d}"
        acc.wait_for_everyone()
        if acc.is_main_process:
            tmp = path.with_name(path.name + ".partial")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            unwrapped = acc.unwrap_model(self.model)
            torch.save({n: p.detach().cpu() for n, p in trainable_named(unwrapped).items()}, tmp / "trainable.pt")
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
            rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
            if torch.cuda.is_available():
                rng["cuda"] = torch.cuda.get_rng_state_all()
            torch.save(rng, tmp / "rng.pt")
            write_json(tmp / STATE_FILE, {"step": self.step, "config": self.cfg.to_dict(), **self.run_meta})
            shutil.rmtree(path, ignore_errors=True)
            os.replace(tmp, path)  # a cut-off run never leaves a half-written checkpoint behind
            old = sorted(p for p in self.checkpoints_dir.glob("step_*") if p.is_dir() and p != path)
            for p in old[: max(0, len(old) - self.cfg.keep_checkpoints + 1)]:
                shutil.rmtree(p, ignore_errors=True)
            if self.export is not None:
                self.export(unwrapped, self.out)
        acc.wait_for_everyone()
        return path

    def load_state(self, path: str | os.PathLike) -> None:
        path = Path(path)
        unwrapped = self.accelerator.unwrap_model(self.model)
        saved = torch.load(path / "trainable.pt", map_location="cpu", weights_only=True)
        params = trainable_named(unwrapped)
        missing = set(params) - set(saved)
        if missing:
            raise ValueError(f"{path}: checkpoint lacks {len(missing)} trainable tensors, e.g. {sorted(missing)[:3]}")
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(saved[n].to(p.device, p.dtype))
        self.optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
        self.scheduler.load_state_dict(torch.load(path / "scheduler.pt", map_location="cpu", weights_only=True))
        rng = torch.load(path / "rng.pt", map_location="cpu", weights_only=False)
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.step = int(json.loads((path / STATE_FILE).read_text())["step"])

    # ------------------------------------------------------------------ loop
    def _loader(self) -> DataLoader:
        acc, cfg = self.accelerator, self.cfg
        micro = MicroBatches(self.dataset, self.collator, cfg.batch_size, cfg.seed, acc.process_index,
                             acc.num_processes, total=cfg.steps * cfg.grad_accum)
        start = self.step * cfg.grad_accum
        return DataLoader(micro, batch_size=None, sampler=range(start, cfg.steps * cfg.grad_accum),
                          num_workers=cfg.num_workers, pin_memory=torch.cuda.is_available(),
                          persistent_workers=False, prefetch_factor=4 if cfg.num_workers else None)

    def train(self) -> dict:
        """Run to ``cfg.steps`` (or the time limit); returns the last logged metrics."""
        acc, cfg = self.accelerator, self.cfg
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
        acc.init_trackers("tb", config={k: v for k, v in cfg.to_dict().items() if isinstance(v, (int, float, str))})
        t_start = last_save = time.monotonic()
        bar = None
        if cfg.progress and acc.is_local_main_process:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.steps, initial=self.step, desc="train", dynamic_ncols=True)
        sums = torch.zeros(4, device=acc.device)  # loss*n_micro, correct, l1_sum, n
        n_micro = 0
        samples_since, t_log = 0, time.monotonic()
        last: dict = {}
        it = iter(self._loader())
        self.model.train()
        try:
            while self.step < cfg.steps:
                for micro in range(cfg.grad_accum):
                    batch = {k: v.to(acc.device, non_blocking=True) for k, v in next(it).items()}
                    # DDP all-reduces only on the last micro-batch of an accumulation
                    sync = micro == cfg.grad_accum - 1
                    ctx = contextlib.nullcontext() if sync else acc.no_sync(self.model)
                    with ctx:
                        with acc.autocast():
                            out = self.model(**batch)
                            loss = out.loss
                            m = step_metrics(out, batch, self.action_tokenizer, self.collator.config)
                        if not torch.isfinite(loss):
                            raise FloatingPointError(f"loss is {loss.item()} at step {self.step}")
                        acc.backward(loss / cfg.grad_accum)
                    sums += torch.stack([loss.detach().float(), m["correct"], m["l1_sum"], m["n"]])
                    n_micro += 1
                    samples_since += batch["input_ids"].shape[0]
                grad_norm = None
                if cfg.max_grad_norm > 0:
                    grad_norm = acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                if bar is not None:
                    bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    tot = acc.reduce(sums, reduction="sum")
                    micro_total = n_micro * acc.num_processes
                    dt = time.monotonic() - t_log
                    last = {"loss": tot[0].item() / micro_total,
                            "action_accuracy": (tot[1] / tot[3].clamp(min=1)).item(),
                            "action_l1": (tot[2] / tot[3].clamp(min=1)).item(),
                            "lr": self.scheduler.get_last_lr()[0],
                            "samples_per_s": samples_since * acc.num_processes / max(dt, 1e-9)}
                    if grad_norm is not None:
                        last["grad_norm"] = float(grad_norm)
                    acc.log({f"train/{k}": v for k, v in last.items()}, step=self.step)
                    self.history.append({"step": self.step, **last})
                    if bar is not None:
                        bar.set_postfix(loss=f"{last['loss']:.3f}", acc=f"{last['action_accuracy']:.2f}")
                    sums.zero_()
                    n_micro, samples_since, t_log = 0, 0, time.monotonic()
                now = time.monotonic()
                out_of_time = cfg.max_minutes > 0 and now - t_start >= cfg.max_minutes * 60
                save_due = now - last_save >= cfg.save_every_minutes * 60
                if acc.num_processes > 1:
                    # clocks differ between processes: decide together, or one process waits in save_state's
                    # barrier while the others wait in the next step's all-reduce (a deadlock)
                    flags = acc.reduce(torch.tensor([float(out_of_time), float(save_due)], device=acc.device),
                                       reduction="sum")
                    out_of_time, save_due = bool(flags[0] > 0), bool(flags[1] > 0)
                if self.step < cfg.steps and ((cfg.save_every_steps and self.step % cfg.save_every_steps == 0)
                                              or save_due or out_of_time):
                    self.save_state()
                    last_save = time.monotonic()
                if out_of_time:
                    acc.print(f"time limit of {cfg.max_minutes} min reached at step {self.step}")
                    break
            if self.step >= cfg.steps:
                self.save_state()
        finally:
            if bar is not None:
                bar.close()
            acc.end_training()
        last["step"] = self.step
        last["wall_s"] = time.monotonic() - t_start
        return last


def resume_path(trainer: Trainer, resume: str) -> Path | None:
    """``auto``: the newest checkpoint under the output directory, if any; ``none``; or an explicit path."""
    if resume in ("", "none", None):
        return None
    if resume == "auto":
        return trainer.latest_checkpoint()
    p = Path(resume)
    if not (p / STATE_FILE).is_file():
        raise FileNotFoundError(f"{p} is not a training checkpoint (no {STATE_FILE})")
    return p


def count_params(model: torch.nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return train, total
