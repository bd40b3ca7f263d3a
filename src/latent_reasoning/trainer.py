"""The one training loop, for every method.

    for step in steps:
        the method may change its curriculum (and ask for a fresh optimizer)
        for each micro-batch: loss = method.loss(examples, step); backward(loss / accumulation)
        average gradients across processes; clip; AdamW step; warmup + cosine schedule
        log; checkpoint every `save_every` and before each evaluation (every `eval_every`, and the last step)

Data order is a function of (seed, step, process), and RNG states are checkpointed, so `resume`
continues a killed run exactly. Ctrl-C saves the steps done since the last checkpoint. Devices and mixed
precision come from accelerate; on a CPU, training uses the cores no other process keeps busy (`share_cpu`) and
keeps freed memory for reuse (`keep_freed_memory`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

from . import checkpoint
from .config import Config, choices
from .tasks import Example


@dataclass
class TrainConfig(Config):
    steps: int = 500
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 20
    lr_schedule: str = choices("cosine", "constant", default="cosine")  # after warmup; constant suits long curricula
    max_grad_norm: float = 1.0
    # bf16: autocast over fp32 weights; bf16-weights: autocast with the weights themselves in bf16 during the forward
    # and backward passes (AdamW still updates fp32 weights); auto: bf16-weights where the device has bf16, else no
    mixed_precision: str = choices("auto", "no", "bf16", "bf16-weights", "fp16", default="auto")
    # auto: eager on a CPU, where torch's bf16 SDPA kernel trained 1.2-2x slower than eager's plain matmuls and fp32
    # the same (bench/results/train_speed-attention.txt); sdpa elsewhere. sdpa keeps no L x L attention maps for
    # the backward pass: the one to pick for long sequences on a CPU short of memory
    attention: str = choices("auto", "eager", "sdpa", default="auto")
    # torch.compile the model for the training steps (evaluation runs it eager): 1.1-1.4x faster steps, after first
    # steps that wait for the compiler, so it pays on runs of more than a few minutes (bench/results/train_speed-compile.txt)
    compile: bool = False
    eval_every: int = 0  # 0: only after the last step
    eval_size: int = 100  # held-out examples scored at each evaluation
    eval_batch_size: int = 64
    save_every: int = 100  # 0: only after the last step
    seed: int = 0
    log_with: str = choices("tensorboard", "wandb", "none", default="tensorboard")

    positive_keys = ("steps", "batch_size", "grad_accum", "lr", "eval_batch_size")  # the others may be 0


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def bf16_supported() -> bool:
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_attention(choice: str, device: torch.device) -> str:
    if choice == "auto":
        return "eager" if device.type == "cpu" else "sdpa"
    return choice


def resolve_precision(choice: str) -> str:
    if choice == "auto":
        return "bf16-weights" if bf16_supported() else "no"
    return choice


class Bf16Weights:
    """Within `with`, the parameters hold bf16 copies of their fp32 values, so the forward and backward passes
    read and write bf16 (the residual stream included); on leaving, the fp32 values come back and the gradients
    are cast to fp32, so that clipping, AdamW, checkpoints and evaluation see fp32 as without it. SmolLM2 SFT on an
    avx512_bf16 CPU trained 1.21x faster than under autocast alone (bench/results/train_speed-bf16.txt). Frozen
    parameters keep one bf16 copy across steps."""

    def __init__(self, trainable: list[torch.nn.Parameter], frozen: list[torch.nn.Parameter]):
        self.trainable, self.frozen = trainable, frozen
        self._frozen_bf16 = [p.data.to(torch.bfloat16) for p in frozen]
        self._fp32: list[torch.Tensor] = []

    def __enter__(self):
        self._fp32 = [p.data for p in self.trainable + self.frozen]
        for parameter in self.trainable:
            parameter.data = parameter.data.to(torch.bfloat16)
        for parameter, copy in zip(self.frozen, self._frozen_bf16):
            parameter.data = copy
        return self

    def __exit__(self, *exc):
        for parameter, value in zip(self.trainable + self.frozen, self._fp32):
            gradient = parameter.grad
            parameter.grad = None  # a bf16 gradient cannot sit on an fp32 parameter
            parameter.data = value
            if gradient is not None:
                parameter.grad = gradient.float()
        self._fp32 = []


def adamw(parameters, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with the fused kernel: one pass over the weights rather than a Python loop of small ops, which
    on a CPU (where torch defaults to that loop) took about 5 s of a 20 s SmolLM2 step on one thread
    (bench/results/train_speed-after.txt)."""
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay, fused=True)


def free_cores(seconds: float = 0.25) -> int:
    """Cores this process may run on that no other process keeps busy (at least 1): its CPU affinity minus
    the busy time /proc/stat shows on those cores over `seconds`, while this process waits."""
    allowed = os.sched_getaffinity(0)
    try:
        before = _idle_and_total(allowed)
        time.sleep(seconds)
        after = _idle_and_total(allowed)
    except OSError:
        return len(allowed)
    busy = sum(1 - (after[cpu][0] - before[cpu][0]) / max(after[cpu][1] - before[cpu][1], 1) for cpu in before)
    return max(1, round(len(allowed) - busy))


def _idle_and_total(cpus) -> dict[int, tuple[int, int]]:
    """Per allowed CPU, (idle + iowait, total) clock ticks since boot, from /proc/stat."""
    times = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            ticks = [int(field) for field in fields[:8]]  # user nice system idle iowait irq softirq steal
            times[int(name[3:])] = (ticks[3] + ticks[4], sum(ticks))
    return times


def share_cpu(accelerator: Accelerator) -> None:
    """Train on as many threads as there are free cores, unless OMP_NUM_THREADS says otherwise: a thread that
    shares its core with another job stalls every other thread at each synchronisation (bench/results/threads.txt)."""
    if accelerator.device.type != "cpu" or "OMP_NUM_THREADS" in os.environ:
        return
    threads = min(torch.get_num_threads(), free_cores())
    if threads < torch.get_num_threads():
        accelerator.print(f"trainer: other processes keep {torch.get_num_threads() - threads} of this process's cores "
                          f"busy; training on {threads} thread(s) (OMP_NUM_THREADS overrides)")
        torch.set_num_threads(threads)


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory() -> bool:
    """Let glibc keep freed memory for reuse instead of giving it back to the system at once. By default a block
    over 128 KB-32 MB is mapped and unmapped for each tensor, and the heap is trimmed as soon as 128 KB lie free at
    its top, so every step's tensors fault their pages in anew: 2.8M minor page faults and 5.8 s of system time in
    400 compiled tiny-5m steps, against 0.25M and 0.9 s with blocks up to 32 MB on the heap and 128 MB of free
    heap kept, at the same peak memory; over 1,500 compiled steps 1.07x the tokens/s (bench/results/train_speed-amx.txt,
    section 12). Only with glibc, and not when MALLOC_* or GLIBC_TUNABLES already set malloc's behaviour. Returns
    whether it was applied."""
    if any(key.startswith("MALLOC_") or key == "GLIBC_TUNABLES" for key in os.environ):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows): leave the allocator alone
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20) and mallopt(_M_TRIM_THRESHOLD, 128 << 20))


@contextlib.contextmanager
def ordered_sums(enabled: bool):
    """Within `with`, torch's deterministic mode. Compiled CPU kernels sum some gradients (the embedding's) with
    atomic adds across threads, so two compiled runs of one seed part after a few dozen steps; in this mode inductor
    sums them in order instead, at no measured cost (bench/results/train_speed-amx.txt, section 10). Eager CPU
    training is reproducible to the bit without it."""
    if not enabled:
        yield
        return
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.utils.deterministic.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False  # the mode would otherwise NaN-fill every new tensor
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.utils.deterministic.fill_uninitialized_memory = before[2]


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    def __init__(self, method, train: list[Example], config: TrainConfig, out: str | Path,
                 run: dict[str, Any], evaluate=None, accelerator: Accelerator | None = None):
        """`run` is written to each checkpoint's config.yaml; `evaluate(method, examples) -> dict` scores held-out data."""
        if not train:
            raise ValueError("no training examples")
        self.method, self.train, self.config, self.out, self.run = method, train, config, Path(out), run
        self.evaluate = evaluate
        precision = resolve_precision(config.mixed_precision)
        self.accelerator = accelerator or Accelerator(
            # without cpu=True, accelerate on a GPU-less machine ignores a multi-process launch (no gloo DDP)
            cpu=not (torch.cuda.is_available() or torch.backends.mps.is_available()),
            mixed_precision=precision.replace("bf16-weights", "bf16"),  # autocast for both bf16 forms
            log_with=None if config.log_with == "none" else config.log_with,
            project_dir=str(self.out),
        )
        self.bf16_weights = precision == "bf16-weights"
        self.eval_examples: list[Example] = []
        self.history: list[dict[str, float]] = []
        self._order_epoch, self._order_cache = -1, []  # the shuffled example order of one epoch

    # -- data ------------------------------------------------------------------------------------
    def examples_for(self, step: int, micro: int) -> list[Example]:
        """The micro-batch of this process at (step, micro): a seeded permutation per epoch."""
        size, world = self.config.batch_size, self.accelerator.num_processes
        first = ((step * self.config.grad_accum + micro) * world + self.accelerator.process_index) * size
        batch = []
        for index in range(first, first + size):
            epoch, offset = divmod(index, len(self.train))
            batch.append(self.train[self._order(epoch)[offset]])
        return batch

    def _order(self, epoch: int) -> list[int]:
        if self._order_epoch != epoch:
            generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
            self._order_cache = torch.randperm(len(self.train), generator=generator).tolist()
            self._order_epoch = epoch
        return self._order_cache

    # -- the loop --------------------------------------------------------------------------------
    def fit(self, eval_examples: list[Example] | None = None, resume: bool = False) -> list[dict[str, float]]:
        config, accelerator, method = self.config, self.accelerator, self.method
        self.eval_examples = eval_examples or []
        method.model.to(accelerator.device)
        method.model.set_attn_implementation(resolve_attention(config.attention, accelerator.device))
        if config.compile:  # the decoder: losses that read hidden states (next_token_cross_entropy) call it alone
            method.model.get_decoder().compile()
        share_cpu(accelerator)
        if accelerator.device.type == "cpu":
            keep_freed_memory()
        set_seed(config.seed)
        optimizer = self._optimizer()
        if config.lr_schedule == "constant":
            scheduler = get_constant_schedule_with_warmup(optimizer, config.warmup_steps)
        else:
            scheduler = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.steps)
        start = 0
        if resume:
            start = self._resume(optimizer, scheduler)
        if accelerator.is_main_process and config.log_with != "none":
            accelerator.init_trackers("train", config={k: v for k, v in self.run.items() if not isinstance(v, dict)})

        progress = tqdm(range(start, config.steps), initial=start, total=config.steps,
                        disable=not accelerator.is_main_process, desc=f"train {method.name}", dynamic_ncols=True)
        self._saved_step = start
        try:
            with ordered_sums(config.compile and accelerator.device.type == "cpu"):
                self._steps(progress, optimizer, scheduler)
        except KeyboardInterrupt:  # Ctrl-C: keep the steps done since the last save
            if self.history and self.history[-1]["step"] > self._saved_step:
                self.save(self.history[-1]["step"], optimizer, scheduler)
            raise
        progress.close()
        accelerator.end_training()
        return self.history

    def _steps(self, progress, optimizer, scheduler) -> None:
        config, accelerator, method = self.config, self.accelerator, self.method
        tokens_seen, started = 0.0, time.perf_counter()
        # records count training seconds across resumes, so a run split over sessions reports its total
        seconds_before = self.history[-1].get("seconds", 0.0) if self.history else 0.0
        weights = self._weights_in_steps()
        for step in progress:
            if method.on_step(step):
                optimizer.state.clear()  # a new curriculum stage starts from fresh AdamW moments (as COCONUT does)
            method.model.train()
            total, metrics = 0.0, {}
            with weights:
                for micro in range(config.grad_accum):
                    with accelerator.autocast():
                        loss, metrics = method.loss(self.examples_for(step, micro), step)
                    if not torch.isfinite(loss):
                        self._diverged(step, loss)
                    accelerator.backward(loss / config.grad_accum)
                    total += float(loss.detach()) / config.grad_accum
                    tokens_seen += metrics.get("tokens", 0.0)
            self._average_gradients()
            if config.max_grad_norm > 0:
                accelerator.clip_grad_norm_(method.trainable_parameters(), config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            elapsed = time.perf_counter() - started
            record = {"step": step + 1, "loss": total, "lr": scheduler.get_last_lr()[0],
                      "seconds": round(seconds_before + elapsed, 1)}
            record.update({k: float(v) for k, v in metrics.items() if k != "tokens"})
            progress.set_postfix(loss=f"{total:.4f}", tok_s=f"{tokens_seen / max(elapsed, 1e-9):.0f}")
            done = step + 1 == config.steps
            evaluating = (config.eval_every and (step + 1) % config.eval_every == 0) or done
            self.history.append(record)
            if evaluating or (config.save_every and (step + 1) % config.save_every == 0):
                self.save(step + 1, optimizer, scheduler)  # before evaluating: an error there loses no steps
            if evaluating:
                scores = self._evaluate()
                if scores and accelerator.is_main_process:
                    progress.write(f"step {step + 1}: loss {total:.4f}, held-out accuracy {scores['eval_accuracy']:.3f}, "
                                   f"{scores['eval_forward_passes']:.1f} forward passes per answer")
                record.update(scores)
            accelerator.log(record, step=step + 1)

    def _weights_in_steps(self):
        """The weights' form during forward and backward: bf16 copies (Bf16Weights) or the weights as they are."""
        if not self.bf16_weights:
            return contextlib.nullcontext()
        trainable = self.method.trainable_parameters()
        chosen = {id(p) for p in trainable}
        frozen = [p for p in self.method.model.parameters() if id(p) not in chosen and p.is_floating_point()]
        return Bf16Weights(trainable, frozen)

    def _optimizer(self) -> torch.optim.Optimizer:
        return adamw(self.method.trainable_parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay)

    def _average_gradients(self) -> None:
        """Mean gradients over processes. Done by hand rather than by wrapping the model in DDP because
        methods run several forward passes per step (thought loops, rollouts) that DDP's hooks do not expect."""
        if self.accelerator.num_processes == 1:
            return
        for parameter in self.method.trainable_parameters():
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
            torch.distributed.all_reduce(parameter.grad, op=torch.distributed.ReduceOp.SUM)
            parameter.grad /= self.accelerator.num_processes

    def _evaluate(self) -> dict[str, float]:
        examples = self.eval_examples[: self.config.eval_size]
        if not (self.evaluate and examples):
            return {}
        self.method.model.eval()
        with torch.compiler.set_stance("force_eager"):  # answering's shapes change every pass: compiling them costs more
            summary = self.evaluate(self.method, examples, batch_size=self.config.eval_batch_size)
        scores = {"eval_accuracy": summary["accuracy"], "eval_forward_passes": summary["forward_passes"]}
        scores.update({f"eval_{key}": summary[key] for key in ("pass_at_1", "pass_at_k") if key in summary})
        return scores

    def _diverged(self, step: int, loss: torch.Tensor):
        saved = checkpoint.find(self.out / "checkpoint")
        where = f"the last good checkpoint is {saved}" if saved else "no checkpoint had been written yet"
        raise TrainingDiverged(f"loss became {float(loss.detach())} at step {step + 1}; stopped ({where})")

    # -- checkpoints -----------------------------------------------------------------------------
    def save(self, step: int, optimizer, scheduler) -> None:
        if not self.accelerator.is_main_process:
            self.accelerator.wait_for_everyone()
            return
        state = {"step": step, "scheduler": scheduler.state_dict(), "python_rng": random.getstate(),
                 "history": self.history}
        checkpoint.write(self.out / "checkpoint", self.method, self.run, state, optimizer)
        self._saved_step = step
        self.accelerator.wait_for_everyone()

    def _resume(self, optimizer, scheduler) -> int:
        folder = checkpoint.find(self.out / "checkpoint")
        if folder is None:
            raise FileNotFoundError(f"--resume: no checkpoint in {self.out}")
        state = checkpoint.read_trainer_state(folder, optimizer)
        scheduler.load_state_dict(state["scheduler"])
        self.history = state.get("history", [])
        self.method.on_step(state["step"])  # put a curriculum back at the stage it had reached
        return state["step"]
