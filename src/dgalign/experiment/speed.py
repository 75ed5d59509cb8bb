"""Efficiency: every method of a run timed on batches of prompts, with the configs its bench run used.

Per (method, batch size, repeat), one sampler call on `batch` of the run's prompts (repeat k takes prompts
k·b .. k·b + b − 1, wrapping), after `cost.prepare` has paid the one-off loads: latency (wall seconds of
the call), generated tokens per second, peak memory (the process's resident memory sampled every 5 ms
during the call: `peak_rss_mb` absolute and `peak_mb` above what it was before the call, after a garbage
collection and glibc's `malloc_trim(0)` have handed the previous cell's freed memory back to the OS — without
that, a call reuses the heap an earlier one left and its own peak reads as ~0; on CUDA the allocator's peak), and energy per answer (CPU seconds ×
`metrics.WATTS_PER_CORE` / batch). Methods run with the settings of the run's bench manifest (budget-matched
knobs included). One JSONL line per call, appended and fsynced: resumable.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import gc
import json
import os
import threading
from pathlib import Path

from ..eval.bench_config import BenchConfig
from ..eval.harness import plan_bench, read_manifest, read_rows
from .config import RunSpec

POLL_S = 0.005  # the memory sampler's period


def _cells(run: RunSpec, labels: list[str]) -> list[tuple[str, int, int]]:
    return [(m, b, k) for m in labels for b in run.batches for k in range(run.repeats)]


def done(path: Path, cfg: BenchConfig, run: RunSpec) -> bool:
    have = {(r["method"], r["batch"], r["repeat"]) for r in read_rows(path)}
    return all(c in have for c in _cells(run, [m.label for m in plan_bench(cfg).methods]))


def release_memory() -> None:
    """Collect garbage and hand freed heap back to the OS (glibc's malloc_trim; a no-op elsewhere), so the next
    call's resident memory starts from what is really held."""
    gc.collect()
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        libc = None
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


class PeakRSS:
    """The process's peak resident memory while inside the block, above what it was on entry (MB)."""

    def __enter__(self):
        import psutil

        self.process, self.stop = psutil.Process(), threading.Event()
        self.start = self.peak = self.process.memory_info().rss
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()
        return self

    def _poll(self) -> None:
        while not self.stop.wait(POLL_S):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)
        self.mb = (self.peak - self.start) / 2**20
        self.peak_mb = self.peak / 2**20


def time_methods(path: Path, cfg: BenchConfig, run: RunSpec) -> None:
    import torch

    from ..eval import metrics
    from ..eval.harness import load_context, warm_up
    from ..ops import make_generator
    from ..types import Prompts

    p = plan_bench(cfg)
    configs = read_manifest(p.manifest_path)["methods"]  # as the bench ran them (budget knobs set)
    methods = [dataclasses.replace(m, cfg=dataclasses.replace(m.cfg, **configs[m.label]["config"])) for m in p.methods]
    read_rows(path, repair=True)
    have = {(r["method"], r["batch"], r["repeat"]) for r in read_rows(path)}
    todo = [c for c in _cells(run, [m.label for m in methods]) if c not in have]
    ctx, load_s = load_context(p.cfg, p.name)
    warm_up(ctx, p.prompts[0], load_s)
    by_label = {m.label: m for m in methods}
    cuda = ctx.lm.device.type == "cuda"
    with open(path, "a") as f:
        for label, b, k in todo:
            method = by_label[label]
            texts = [p.prompts[(k * b + j) % len(p.prompts)]["prompt"] for j in range(b)]
            batch = Prompts.encode(ctx.lm, texts, raw=ctx.raw)
            release_memory()
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(ctx.lm.device)
            cpu0 = metrics.cpu_seconds()
            with PeakRSS() as mem:
                out = method.sampler(ctx.lm, ctx.proxy, batch, method.cfg, generator=make_generator(k, ctx.lm.device))
            cpu = metrics.cpu_seconds() - cpu0
            tokens = sum(out.num_tokens)
            row = {"method": label, "batch": b, "repeat": k, "latency_s": round(out.cost.wall_s, 4),
                   "tokens": tokens, "tokens_per_s": tokens / out.cost.wall_s if out.cost.wall_s else None,
                   "lm_forward_tokens": out.cost.lm_forward_tokens, "peak_mb": round(mem.mb, 1),
                   "peak_rss_mb": round(mem.peak_mb, 1),
                   "gpu_peak_mb": round(torch.cuda.max_memory_allocated(ctx.lm.device) / 2**20, 1) if cuda else None,
                   "energy_j_per_answer": round(metrics.energy_joules(cpu) / b, 3)}
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
