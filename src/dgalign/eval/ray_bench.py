"""`dgalign bench --ray`: a run's pending rows on Ray actors, streamed back to the driver, which alone writes them.

Each actor (`BenchWorker`) builds the run's context once, with `harness.load_context` as the local
bench does, and runs every call it is handed through `harness.run_rows`: there is one implementation
of a row. The pending calls are dealt out as the actors free up (each holds `DEPTH` calls at a time,
so it never waits on the driver between two), and each finished row comes back to the driver, which
appends and fsyncs it (`harness.run_bench`); resume and "no row lost or duplicated" mean what they
mean locally. Calls are seeded by (seed, first prompt index), so which actor ran a row does not change it;
only the rows file's order (the order rows finished in) differs from a local run's.

Failures are Ray's to handle: a dead actor is restarted (`cluster.RESTARTS` times) and the calls it
held are retried on the new one (`max_task_retries`). An actor that dies for good leaves its rows as
error rows (re-run them with `--retry-errors`) and the rest go to the others. Killing the driver kills
its actors; running the same command again resumes.
"""

from __future__ import annotations

import functools
import os
import platform
from collections import deque
from collections.abc import Callable, Iterator

from ..cluster import RESTARTS, RayOptions, actor_options, cause, connect
from ..errors import DGAlignError
from . import harness
from .harness import Plan, _Method

DEPTH = 2  # calls an actor holds at once: the one it runs and the next


class BenchWorker:
    """A Ray actor: one run's context, loaded once, and `harness.run_rows` for each call it is handed."""

    def __init__(self, plan: Plan):
        self.ctx, load_s = harness.load_context(plan.cfg, plan.name)
        self.prompts = harness.calibration_rows(plan.prompts, plan.cfg.batch)
        self.setup = {**harness.warm_up(self.ctx, plan.prompts[0], load_s), "pid": os.getpid(),
                      "node": platform.node()}

    def ready(self) -> dict:
        """The setup timings of this actor's context, its pid and node."""
        return self.setup

    def calibrate(self, methods: list[_Method], multiple: float, known: dict, batch: int = 1) -> dict:
        return harness.calibrate(self.ctx, methods, self.prompts, multiple, known, batch)

    def run(self, method: _Method, indices: list[int], rows: list[dict], seed: int) -> list[dict]:
        return harness.run_rows(self.ctx, method, indices, rows, seed)


class RayRows:
    """Rows run on `opts.workers` Ray actors (a `harness.Rows`, as `harness.LocalRows` is)."""

    def __init__(self, opts: RayOptions, plan: Plan):
        self.ray = connect(opts)
        self.opts, self.plan = opts, plan
        worker = self.ray.remote(BenchWorker).options(**actor_options(opts))
        self.workers = [worker.remote(plan) for _ in range(opts.workers)]
        try:  # every actor loads before any row runs; a model that cannot load fails here, once (not retried)
            self.setups = self.ray.get([w.ready.options(max_task_retries=0).remote() for w in self.workers])
        except self.ray.exceptions.RayError as err:
            self.close()
            raise DGAlignError(f"a Ray worker could not load the run: {cause(err)}") from None

    def setup(self) -> dict:
        """What the invocation records: the first actor's "setup", and under "ray" the cluster and every actor's."""
        return {"setup": {k: self.setups[0][k] for k in ("load_s", "reward_load_s", "warmup_s")},
                "ray": {"address": self.opts.address, "workers": self.opts.workers, "resources": self.opts.resources,
                        "worker_setup": self.setups}}

    def calibrate(self, methods: list[_Method], multiple: float, known: dict, batch: int = 1) -> dict:
        return self.ray.get(self.workers[0].calibrate.remote(methods, multiple, known, batch))

    def run(self, grid: list[harness.Call]) -> Iterator[dict]:
        """The rows of the grid's calls, as each call finishes."""
        queue, live = deque(grid), list(self.workers)
        held: dict = {}  # ObjectRef -> (worker, the row it runs)

        def deal(w) -> None:
            if queue:
                indices, method, seed = item = queue.popleft()
                held[w.run.remote(method, list(indices), [self.plan.prompts[i] for i in indices], seed)] = (w, item)

        for w in live:
            for _ in range(DEPTH):
                deal(w)
        while held:
            [ref], _ = self.ray.wait(list(held), num_returns=1)
            w, (indices, method, seed) = held.pop(ref)
            try:
                rows = self.ray.get(ref)
            except self.ray.exceptions.RayActorError as err:  # restarted RESTARTS times, then lost for good
                rows = [{**harness.row_head(self.plan.name, method, i, self.plan.prompts[i], seed),
                         "error": f"RayActorError: its Ray worker died for good ({cause(err)})"} for i in indices]
                if w in live:
                    live.remove(w)
                if not live:
                    raise DGAlignError(f"every Ray worker died {1 + RESTARTS} times; the rows written so far are "
                                       "kept: run the same command again to resume") from None
            if w in live:  # the others take a lost actor's share as they free up
                deal(w)
            yield from rows

    def close(self) -> None:
        for w in self.workers:
            self.ray.kill(w)


def ray_rows(opts: RayOptions) -> Callable[[Plan], RayRows]:
    """The runner `harness.run_bench(cfg, runner=...)` takes for the rows to run on Ray."""
    return functools.partial(RayRows, opts)

