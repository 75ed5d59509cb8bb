"""Efficiency: every method of a run timed on batches of prompts, with the configs its bench run used.

Per (method, batch size, repeat), one sampler call on `batch` of the run's prompts (repeat k takes prompts
k·b .. k·b + b − 1, wrapping), after `cost.prepare` has paid the one-off loads: latency (wall seconds of
the call), generated tokens per second, peak memory (the process's resident memory sampled every 5 ms
during the call, minus before it; on CUDA the allocator's peak), and energy per answer (CPU seconds ×
`metrics.WATTS_PER_CORE` / batch). Methods run with the settings of the run's bench manifest (budget-matched
knobs included). One JSONL line per call, appended and fsynced: resumable.
"""

from __future__ import annotations

import dataclasses
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
            if cuda:
                torch.cuda.reset_peak_memory_stats(ctx.lm.device)
            cpu0 = metrics.cpu_seconds()
            with PeakRSS() as mem:
                out = method.sampler(ctx.lm, ctx.proxy, batch, method.cfg, generator=make_generator(k, ctx.lm.device))
            cpu = metrics.cpu_seconds() - cpu0
            tokens = sum(out.num_tokens)
            row = {"method": label, "batch": b, "repeat": k, "latency_s": round(out.cost.wall_s, 4),
                   "tokens": tokens, "tokens_per_s": tokens / out.cost.wall_s if out.cost.wall_s else None,
                   "lm_forward_tokens": out.cost.lm_forward_tokens, "peak_mb": round(mem.mb, 1),
                   "gpu_peak_mb": round(torch.cuda.max_memory_allocated(ctx.lm.device) / 2**20, 1) if cuda else None,
                   "energy_j_per_answer": round(metrics.energy_joules(cpu) / b, 3)}
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
