"""Ray, the optional engine of `--ray` (bench rows, DGA rollouts): connecting, and the options every actor gets.

Ray is imported here only, and only when `--ray` is given (`eval.ray_bench`, `train.ray_collect` reach it
through `connect`; an import-linter contract in pyproject.toml holds the rest of the package to it). The work itself, a
bench row or a rollout shard, runs through the same functions as without Ray; this module only says
where: which cluster, how many actors, what each one reserves, and how often Ray restarts one that dies.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

from .errors import DGAlignError

EXTRA = "pip install 'dgalign[ray]'"
RESTARTS = 4  # times Ray restarts a dead actor (its in-flight calls are retried on the new one), then gives up
FORWARDED_ENV = ("DGALIGN_DATA", "DGALIGN_REWARD_DEVICE")  # driver settings the actors need, whatever node


@dataclass
class RayOptions:
    address: str = "local"  # "auto": the running cluster (`ray start`); "local" or "": start one here; or host:port
    workers: int = 2  # actors; each loads the model and the rewards once
    resources: dict[str, float] = field(default_factory=lambda: {"CPU": 1})  # what each actor reserves


def parse_resources(text: str) -> dict[str, float]:
    """`--worker-resources` '{"CPU": 1}' or '{"GPU": 1, "CPU": 2}' as a dict, checked."""
    try:
        resources = json.loads(text)
    except ValueError:
        resources = None
    if not isinstance(resources, dict) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and v >= 0 for v in resources.values()):
        raise DGAlignError(f'--worker-resources must be a JSON object of amounts, e.g. \'{{"CPU": 1}}\' or '
                           f'\'{{"GPU": 1}}\', got {text!r}')
    return {str(k): float(v) for k, v in resources.items()}


def import_ray():
    """The `ray` module, or a one-line error naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise DGAlignError(f"--ray needs Ray, which is not installed: {EXTRA}") from None
    return ray


def connect(opts: RayOptions):
    """The `ray` module, connected to `opts.address` (a session this process already opened is kept)."""
    if opts.workers < 1:
        raise DGAlignError(f"--workers must be at least 1, got {opts.workers}")
    ray = import_ray()
    if not ray.is_initialized():
        local = opts.address in ("", "local")
        try:  # log_to_driver off: the driver shows one bar; failures come back as error rows or one line (`cause`)
            ray.init(address="local" if local else opts.address, include_dashboard=False if local else None,
                     logging_level="WARNING", log_to_driver=False)
        except ConnectionError as err:
            raise DGAlignError(f"--ray {opts.address}: no Ray cluster there ({err}); start one with `ray start "
                               "--head`, or give --ray alone to start one for this run") from None
    return ray


def cause(err: Exception) -> str:
    """What went wrong in a Ray worker, in one line: the worker's own exception (the last `Type: message` of the
    traceback Ray's error carries; our own errors by their message alone), else the error's first line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    raised = [i for i, line in enumerate(lines) if re.match(r"[\w.]+(Error|Exception|Interrupt|Exit): ", line)]
    if not raised:
        return lines[0] if lines else type(err).__name__
    return re.sub(r"^dgalign\.errors\.\w+: ", "", " ".join(lines[raised[-1]:]))


def actor_options(opts: RayOptions) -> dict:
    """`ActorClass.options(...)` for every actor: its reservation, restarts with retried calls, and the
    environment it runs in (the driver's DGALIGN_* settings; no progress bars of its own: the driver has one)."""
    amounts = dict(opts.resources)
    reserve = {"num_cpus": amounts.pop("CPU", 0.0), "num_gpus": amounts.pop("GPU", 0.0)}
    if "memory" in amounts:
        reserve["memory"] = amounts.pop("memory")
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    return {**reserve, "resources": amounts, "max_restarts": RESTARTS, "max_task_retries": -1,
            "runtime_env": {"env_vars": {**env, "TQDM_DISABLE": "1"}}}
