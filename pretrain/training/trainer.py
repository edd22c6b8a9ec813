"""Single-process training: the short loop and the components it calls.

The DeepSpeed engine (multi-process, ZeRO, tensor parallelism) reuses the same pieces: the loss
(:mod:`pretrain.model.losses`), the schedule (:mod:`pretrain.training.optim`), the evaluation
(:mod:`pretrain.inference.evaluation`) and the batch sampler (:mod:`pretrain.data`).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from data_prep.shards import ShardError
from data_prep.vocab import build_vocab
from pretrain.checkpoints import store
from pretrain.checkpoints.consolidate import OpenWeights, open_any
from pretrain.config import Config, Derived, as_dict, atomic_write_text, save_resolved
from pretrain.data import build_data
from pretrain.inference.evaluation import evaluate_bytes
from pretrain.inference.generation import Sampling, generate
from pretrain.model import build_model, count_params, flops_per_byte
from pretrain.model.flops import executed_flops_per_byte
from pretrain.model.losses import bits_per_byte, lm_loss, targets_for
from pretrain.runtime.compile import compile_model, compile_seconds
from pretrain.runtime.device import pick_device
from pretrain.runtime.host_memory import apply_host_memory_setting
from pretrain.runtime.logs import MetricsWriter, format_metrics, get_logger
from pretrain.runtime.perf import MFUMeter, format_flops, memory_gb, shared_peak
from pretrain.runtime.processes import DIVERGED, STOP_REASON, StopSignals
from pretrain.runtime.rng import rng_state, seed_everything, set_rng_state
from pretrain.training.inputs import check_weights_fit, input_errors
from pretrain.training.memory import apply_activation_checkpointing
from pretrain.training.optim import build_optimizer, lr_at, set_lr

log = get_logger()


class Trainer:
    """Builds model, optimizer, data, evaluation and checkpointing from one config.

    Construction and :meth:`train` up to the first step are the set-up phase: a bad input found
    there (corpus, tokenizer, ``train.init_from``, run directory, checkpoint) is an
    :class:`~pretrain.training.inputs.InputError` or
    :class:`~pretrain.checkpoints.store.CheckpointError`, one line naming the key or file."""

    def __init__(self, cfg: Config, derived: Derived, device: Optional[torch.device] = None,
                 rank: int = 0) -> None:
        self.cfg, self.derived = cfg, derived
        self.run_dir = Path(cfg.run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.device = device or pick_device(cfg.train.device)
        apply_host_memory_setting(self.device, cfg.train.host_memory_reuse)
        self.rank, self.is_main, self.world_size = rank, rank == 0, derived.world_size
        self.amp = self.autocast_dtype()
        self.signals = StopSignals()
        self._stop_logged = False
        seed_everything(cfg.train.seed)
        with input_errors("model.tokenizer" if cfg.model.tokenizer else "model.vocab",
                          (OSError, ValueError, RuntimeError)):
            self.vocab = build_vocab(cfg.model.vocab, cfg.model.tokenizer)
        exported = self.initial_weights()
        self.build_model(exported)
        if cfg.train.compile:
            self.compile_model()
        self._compile_logged = not cfg.train.compile
        t0 = time.perf_counter()
        with input_errors(f"data.source={cfg.data.source}", (OSError, ValueError, ShardError)):
            data = build_data(cfg, self.vocab, derived.micro_batch_size, *self.data_coordinates())
        self.train_data, self.val_text = data.train, data.val_text
        self.bytes_per_unit = data.bytes_per_unit  # 1.0 for byte models
        log.info("%s; loaded in %.1fs", data.description, time.perf_counter() - t0)
        self.n_params = self.parameter_count()
        # Two counts: the paper's (compute matching, results) and the work done (MFU).
        self.train_flops_per_byte = flops_per_byte(cfg.model, self.vocab.vocab_size,
                                                   self.bytes_per_unit, training=True)
        self.executed_flops_per_byte = executed_flops_per_byte(
            cfg.model, self.vocab.vocab_size, self.bytes_per_unit, training=True)
        log.info("model %s: %.2fM parameters%s, %.2f MFLOP/byte forward; device %s, %s",
                 cfg.model.arch, self.n_params / 1e6, self.layout(), self.train_flops_per_byte / 3e6,
                 self.device, cfg.train.dtype)
        self.step = 0
        self.bytes_seen = 0.0
        self.skipped_total = self.skipped_in_a_row = 0
        self._nan_injected = False
        self.metrics = MetricsWriter(self.run_dir, False)  # opened by train(), after resuming
        if exported is not None and cfg.train.init_continue:
            self.continue_from_export(exported.meta)

    # ------------------------------------------------------------------ construction steps
    # The distributed engine overrides these (and only these) to build the same trainer.

    def autocast_dtype(self) -> Optional[torch.dtype]:
        """bf16 autocast in the single-process loop (the engine casts the model itself)."""
        return torch.bfloat16 if self.cfg.train.dtype == "bf16" else None

    def initial_weights(self) -> Optional[OpenWeights]:
        """The weights named by ``train.init_from``, opened lazily: an export file, or a run
        directory / checkpoint of any engine and layout (a DeepSpeed one is consolidated
        offline, cached beside it). A checkpoint to resume from wins."""
        path = self.cfg.train.init_from
        if not path or self.has_checkpoint():
            return None
        log.info("initializing from %s", path)
        with input_errors("train.init_from", (OSError, ValueError, KeyError)):
            return open_any(Path(path))

    def has_checkpoint(self) -> bool:
        """Whether ``checkpoints/latest`` exists (a dangling pointer is an error)."""
        return store.latest(self.ckpt_dir) is not None

    def build_model(self, weights: Optional[OpenWeights]) -> None:
        """Set ``self.model`` (initialized from ``weights`` when given, else from the seed) and
        ``self.optimizer``."""
        self.model = build_model(self.cfg.model, self.vocab.vocab_size, self.vocab.pad_id,
                                 self.vocab.bos_id, seed=self.cfg.train.seed).to(self.device)
        if weights is not None:
            with input_errors("train.init_from", (OSError, ValueError, KeyError)):
                state = weights.all()
            check_weights_fit(self.model, state, str(self.cfg.train.init_from),
                              weights.config.get("model"), self.cfg, "train.init_from")
            self.model.load_state_dict(state)
        apply_activation_checkpointing(self.model, self.cfg.parallel)
        self.optimizer = build_optimizer(self.model, self.cfg.optim)

    def compile_model(self) -> None:
        """torch.compile the model's forward (``train.compile``); the engine compiles its own."""
        compile_model(self.model, self.device, self.cfg.train.compile_backend)

    def data_coordinates(self) -> tuple:
        """(data-parallel rank, data-parallel size) of this process."""
        return 0, 1

    def parameter_count(self) -> int:
        """Parameters this process holds."""
        return count_params(self.model)

    def layout(self) -> str:
        """How the model is laid out over processes (for the start-up log line)."""
        return ""

    # ------------------------------------------------------------------ components

    def train_step(self) -> Dict[str, float]:
        """One optimizer update over ``grad_accum_steps`` micro-batches."""
        cfg, model = self.cfg, self.model
        lr = lr_at(self.step, cfg.optim, cfg.train.max_steps)
        set_lr(self.optimizer, lr)
        model.train()
        self.optimizer.zero_grad(set_to_none=True)
        accum = self.derived.grad_accum_steps
        loss_sum = 0.0
        for _ in range(accum):
            x = self.train_data.next_batch().to(self.device)  # (B, T)
            with torch.autocast(self.device.type, dtype=self.amp or torch.float32,
                                enabled=self.amp is not None):
                logits = model(x)  # logits[:, t] predicts x[:, t]
            loss = lm_loss(logits, targets_for(x, self.vocab.pad_id))
            if self.inject_nan_now():
                loss = loss * float("nan")
            (loss / accum).backward()
            loss_sum += loss.item()
        clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip).item()
        if not (math.isfinite(loss_sum) and math.isfinite(grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)
            return {"loss": loss_sum / accum, "grad_norm": grad_norm, "skipped": True}
        self.optimizer.step()
        self.step += 1
        units = self.derived.global_batch_units
        self.bytes_seen += units * self.bytes_per_unit
        loss = loss_sum / accum
        return {"loss": loss, "bpb": bits_per_byte(loss, self.bytes_per_unit), "lr": lr,
                "grad_norm": grad_norm}

    def evaluate(self) -> Dict[str, float]:
        """Validation bits per byte (basic mode) over ``data.val_bytes`` held-out bytes."""
        patch = self.cfg.model.patch_size if self.cfg.model.arch == "megabyte" else None
        out = evaluate_bytes(self.model, self.val_text, self.vocab, self.cfg.model.seq_len,
                             "basic", patch, batch_size=self.derived.micro_batch_size,
                             autocast_dtype=self.amp, **self.evaluation_share())
        return {"bpb": out["bpb"], "bytes": out["bytes"]}

    def evaluation_share(self) -> Dict[str, Any]:
        """How validation is split over processes (``share``, ``reduce`` of evaluate_bytes)."""
        return {}

    def sample(self) -> Optional[str]:
        """A short generation from the start of the validation text, for the logs."""
        n = self.cfg.train.sample_bytes
        if not n:
            return None
        head = self.val_text[:min(64, self.cfg.model.seq_len // 2)]
        prompt = self.vocab.encode(head.decode("utf-8", "ignore").encode("utf-8"))
        prompt = prompt[:self.cfg.model.seq_len // 2]
        out = generate(self.model, [prompt], n, Sampling(temperature=0.8, top_k=50),
                       seed=self.step, banned=[self.vocab.pad_id, self.vocab.bos_id])
        return self.vocab.decode(prompt + out["outputs"][0]).decode("utf-8", errors="replace")

    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to continue exactly: weights, optimizer, step, RNG, config."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "step": self.step, "bytes_seen": self.bytes_seen, "rng": rng_state(),
                "data": self.train_data.state_dict(),
                "config": as_dict(self.cfg)}

    def save(self) -> Path:
        path = store.save(self.ckpt_dir, self.step, self.state_dict(),
                               self.cfg.checkpoint.keep_last)
        log.info("saved checkpoint %s", path)
        return path

    def maybe_resume(self) -> None:
        """Continue from ``checkpoints/latest`` when resumption is on and one exists."""
        if not self.cfg.checkpoint.resume:
            return
        path = store.latest(self.ckpt_dir)
        if path is None:
            return
        state = store.load(path)
        check_weights_fit(self.model, state["model"], f"checkpoint {path}",
                          (state.get("config") or {}).get("model"), self.cfg, "cannot resume")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.bytes_seen = state["step"], state["bytes_seen"]
        set_rng_state(state["rng"])
        self.train_data.load_state_dict(state["data"])
        log.info("resumed from %s at step %d", path, self.step)

    # ------------------------------------------------------------------ the loop

    def continue_from_export(self, meta: Dict[str, Any]) -> None:
        """Take over an export's step, bytes seen and data position (``train.init_continue``)."""
        self.step, self.bytes_seen = int(meta["step"]), float(meta.get("bytes_seen", 0.0))
        if meta.get("data"):
            self.train_data.load_state_dict(meta["data"])
        log.info("continuing the exported run at step %d", self.step)

    def inject_nan_now(self) -> bool:
        """Fault injection for tests: env PRETRAIN_FAULT_NAN_STEP=N poisons update N's loss once."""
        target = os.environ.get("PRETRAIN_FAULT_NAN_STEP")
        if target is None or self._nan_injected or int(target) != self.step:
            return False
        self._nan_injected = True
        return True

    def stop_request(self, timed_out: bool) -> Optional[str]:
        """Why training stops after this step: "signal" (SIGTERM/SIGUSR1 arrived, see
        :class:`~pretrain.runtime.processes.StopSignals`), "max_minutes" or None."""
        signalled = self.signals.received is not None
        if signalled and not self._stop_logged:
            self._stop_logged = True
            log.warning("rank %d: received signal %d; checkpointing at this step boundary",
                        self.rank, self.signals.received)
        return self.agree_stop(signalled, timed_out)

    def agree_stop(self, signalled: bool, timed_out: bool) -> Optional[str]:
        """The stop decision from this process's flags. Every rank must get the same answer (the
        distributed engine agrees across ranks: a clock read on one rank alone would send the
        ranks down different paths and hang them in mismatched collectives)."""
        if signalled:
            return "signal"
        return "max_minutes" if timed_out else None

    def measure_peak(self) -> MFUMeter:
        """MFU against the shared peak (:func:`pretrain.runtime.perf.shared_peak`, measured
        once per process group in the run's dtype) times the devices of this run."""
        dtype = torch.bfloat16 if self.cfg.train.dtype == "bf16" else torch.float32
        per_device = shared_peak(self.device, dtype)
        log.info("MFU against a peak of %s per device x %d device(s) (best %s square matmul, "
                 "measured once; raised to the best step if one beats it)",
                 format_flops(per_device), self.world_size, self.cfg.train.dtype)
        return MFUMeter(per_device * self.world_size, dtype)

    def prepare_run(self) -> None:
        """The rest of the set-up: resume, then (only once that worked) write ``config.yaml``
        and open TensorBoard, dropping the points an earlier attempt logged after the step
        resumed from (``purge_step``), so a resumed curve has no duplicates."""
        cfg = self.cfg
        self.maybe_resume()
        if self.step > cfg.train.max_steps:
            log.warning("resumed at step %d, beyond train.max_steps=%d: nothing to train; the "
                        "results report step %d", self.step, cfg.train.max_steps, self.step)
        if self.is_main:
            with input_errors(f"run_dir={self.run_dir}"):
                save_resolved(cfg, self.run_dir, self.derived)
                self.metrics = MetricsWriter(self.run_dir, cfg.logging.tensorboard,
                                             purge_step=self.step + 1 if self.step else None)

    def train(self) -> Dict[str, Any]:
        """Train to ``train.max_steps`` (or ``train.max_minutes`` / a stop signal); return results."""
        self.prepare_run()
        with self.signals:
            return self._loop()

    def _loop(self) -> Dict[str, Any]:
        """The training loop proper (after :meth:`prepare_run`)."""
        cfg = self.cfg
        meter = _Throughput(self.bytes_seen, self.measure_peak())
        t_start = time.perf_counter()
        deadline = t_start + cfg.train.max_minutes * 60 if cfg.train.max_minutes else None
        bar = _progress(cfg, self.step, enabled=self.is_main)
        # Logged training steps and validations (bits per byte against training FLOPs); a resumed
        # run keeps the entries of the run it continues.
        history = self._earlier("history.json")
        validations = self._earlier("validation.json")
        val: Dict[str, float] = {}
        stop_reason = "max_steps"
        while self.step < cfg.train.max_steps:
            stats = self.train_step()
            if stats.get("skipped"):
                self._count_skip(stats)
                if self.stop_request(False) == "signal":
                    stop_reason = "signal"
                    self.save()
                    break
                continue
            self.skipped_in_a_row = 0
            meter.steps += 1
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.3f}", bpb=f"{stats['bpb']:.3f}")
            if self.step % cfg.logging.log_interval == 0 or self.step == cfg.train.max_steps:
                history.append(self._log_step(stats, meter))
            if not self._compile_logged:
                self._log_compile_time(meter)
            reason = self.stop_request(deadline is not None and time.perf_counter() > deadline)
            last = self.step == cfg.train.max_steps or reason == "max_minutes"
            if last or (cfg.train.eval_interval and self.step % cfg.train.eval_interval == 0):
                val = self._validate(validations)
            if last or reason or (cfg.checkpoint.interval and self.step % cfg.checkpoint.interval == 0):
                self.save()
            if reason:
                stop_reason = reason
                log.info("stopping at step %d: %s", self.step, "stop signal received; checkpoint "
                         "saved" if reason == "signal" else
                         f"train.max_minutes={cfg.train.max_minutes} reached")
                break
        bar.close()
        if not val:  # resumed at max_steps or stopped early: still report a validation number
            val = self.evaluate()
        self.metrics.close()
        return self._finish(stop_reason, val, history, validations, time.perf_counter() - t_start)

    def _count_skip(self, stats: Dict[str, Any]) -> None:
        """A skipped (non-finite) update: log and count it; abort after too many in a row."""
        self.skipped_total += 1
        self.skipped_in_a_row += 1
        self._say(f"step {self.step + 1}: non-finite loss or gradient (loss {stats['loss']}); update "
                  f"skipped ({self.skipped_in_a_row} in a row, {self.skipped_total} in total)")
        self.metrics.scalars(self.step, {"skipped_steps": self.skipped_total}, "train/")
        limit = self.cfg.train.max_skipped_in_a_row
        if self.skipped_in_a_row > limit:
            if self.is_main:  # for launchers and the comparison: not a crash, do not retry blindly
                atomic_write_text(self.run_dir / STOP_REASON, DIVERGED + "\n")
            raise TrainingAborted(f"{self.skipped_in_a_row} non-finite steps in a row (train."
                                  f"max_skipped_in_a_row={limit}); the last good checkpoint is "
                                  "left as it was")

    def _log_step(self, stats: Dict[str, Any], meter: _Throughput) -> Dict[str, Any]:
        """Add throughput, MFU and memory to ``stats``, write them out; the history entry."""
        stats.update(meter.window(self.bytes_seen, self.executed_flops_per_byte,
                                  self.train_flops_per_byte, self.bytes_per_unit),
                     memory_gb=memory_gb(self.device))
        self.metrics.scalars(self.step, stats, "train/")
        self._say(format_metrics(self.step, self.cfg.train.max_steps, stats, meter.mfu.describe()))
        return {"step": self.step, **stats}

    def _log_compile_time(self, meter: _Throughput) -> None:
        """One line after the first compiled step: compilation seconds and graphs. The throughput
        window restarts there, so compilation counts as training time at most in a window that
        ends on the first step itself."""
        self._compile_logged = True
        c = compile_seconds()
        self._say(f"torch.compile ({self.cfg.train.compile_backend}): {c['seconds']:.1f}s compiling "
                  f"{int(c['graphs'])} graph(s) in the first step")
        meter.restart(self.bytes_seen)

    def _validate(self, validations: List[Dict[str, Any]]) -> Dict[str, float]:
        """Validation bits per byte (logged, appended to ``validations``) and a sample."""
        val = self.evaluate()
        self.metrics.scalars(self.step, val, "val/")
        validations.append({"step": self.step, "val_bpb": val["bpb"], "bytes_seen": self.bytes_seen,
                            "train_flops": self.bytes_seen * self.train_flops_per_byte})
        self._say(f"step {self.step}: validation {val['bpb']:.4f} bits per byte over {val['bytes']} "
                  "held-out bytes")
        sample = self.sample()
        if sample is not None:
            self.metrics.text(self.step, "samples", sample)
            self._say("sample: " + repr(sample[:200]))
        return val

    def _finish(self, stop_reason: str, val: Dict[str, float], history: List[Dict[str, Any]],
                validations: List[Dict[str, Any]], seconds: float) -> Dict[str, Any]:
        """Write ``results.json``, the histories and ``stop_reason`` (rank 0); the results."""
        result = {"run_dir": str(self.run_dir), "arch": self.cfg.model.arch, "steps": self.step,
                  "stop_reason": stop_reason, "val_bpb": val["bpb"], "val_bytes": val["bytes"],
                  "train_loss": history[-1]["loss"] if history else None,
                  "skipped_steps": self.skipped_total,
                  "bytes_seen": self.bytes_seen, "parameters": self.n_params,
                  "train_flops_per_byte": self.train_flops_per_byte,
                  "executed_train_flops_per_byte": self.executed_flops_per_byte,
                  "world_size": self.world_size, "seconds": seconds}
        if self.is_main:
            atomic_write_text(self.run_dir / "results.json", json.dumps(result, indent=2) + "\n")
            atomic_write_text(self.run_dir / "history.json", json.dumps(history) + "\n")
            atomic_write_text(self.run_dir / "validation.json", json.dumps(validations) + "\n")
            # One word for launchers: "signal" means "checkpointed, requeue me".
            atomic_write_text(self.run_dir / STOP_REASON, stop_reason + "\n")
        return result

    def _earlier(self, name: str) -> List[Dict[str, Any]]:
        path = self.run_dir / name
        if self.step == 0 or not path.is_file():
            return []
        try:
            return [h for h in json.loads(path.read_text()) if h["step"] <= self.step]
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring unreadable %s from the earlier run", path)
            return []

    def _say(self, message: str) -> None:
        if self.is_main:
            _say(message)


class _Throughput:
    """Bytes per second, FLOP/s (both counts) and MFU over the window since the last logged step."""

    def __init__(self, bytes_seen: float, mfu: MFUMeter) -> None:
        self.t, self.bytes, self.steps, self.mfu = time.perf_counter(), bytes_seen, 0, mfu

    def restart(self, bytes_seen: float) -> None:
        """Start the window afresh (after compilation, which is not training time)."""
        self.t, self.bytes, self.steps = time.perf_counter(), bytes_seen, 0

    def window(self, bytes_seen: float, executed_per_byte: float, paper_per_byte: float,
               bytes_per_unit: float) -> Dict[str, float]:
        """``model_tflops``: work done (the MFU numerator); ``paper_tflops``: the paper's count."""
        now = time.perf_counter()
        bps = (bytes_seen - self.bytes) / max(now - self.t, 1e-9)
        achieved = bps * executed_per_byte
        out = {"bytes_per_s": bps, "units_per_s": bps / bytes_per_unit,
               "seconds_per_step": (now - self.t) / max(self.steps, 1),
               "model_tflops": achieved / 1e12, "paper_tflops": bps * paper_per_byte / 1e12,
               "mfu": self.mfu.mfu(achieved), "peak_tflops": self.mfu.peak / 1e12}
        self.restart(bytes_seen)
        return out


class TrainingAborted(RuntimeError):
    """Training cannot continue (e.g. too many non-finite steps in a row)."""


class ResumeError(RuntimeError):
    """The run cannot resume as asked (ranks see different checkpoints, another layout wrote it)."""


def _say(message: str) -> None:
    """Print a line to stderr without breaking the progress bar."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


def _progress(cfg: Config, start: int, enabled: bool = True):
    from tqdm import tqdm

    return tqdm(total=cfg.train.max_steps, initial=start, desc="train", unit="step",
                disable=not (cfg.logging.progress_bar and enabled), dynamic_ncols=True,
                file=sys.stderr)
