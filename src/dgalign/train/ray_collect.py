"""`dgalign train --ray`: the rollout-and-score phase of DGA training (§2.6) on Ray actors, training on the driver.

The prompts are cut into `cfg.rollout_shards` shards (`dga.shard_prompts`); each actor (`Collector`)
loads the LM and the reward once and runs `dga.collect_shard` on the shards it is handed, the same
function a local run with that many shards runs, with the shard's own generator (seeded from
(seed, shard index)). The tuples come back to the driver and are joined in shard order, so the
checkpoint depends on the seed and the shard count only: it equals a local `--set rollout_shards=K`
run's for K ≥ 2 (K = 1 locally is the one unsharded stream of earlier releases).

A dead actor is restarted by Ray and the shard it held is run again (`max_task_retries`); a shard is
a pure function of its prompts, the config and its index, so the retry gives the same tuples.
"""

from __future__ import annotations

from collections.abc import Callable

from tqdm import tqdm

from ..cluster import RayOptions, actor_options, cause, connect
from ..errors import DGAlignError
from ..types import LM, Prompts
from .dga import TrainConfig, Tuples, collect_shard, join_tuples, shard_prompts


class Collector:
    """A Ray actor: the LM and the reward, loaded once, and `dga.collect_shard` for each shard it is handed."""

    def __init__(self, load: Callable[[], LM], reward: str):
        from ..rewards import get_reward

        self.lm, self.reward = load(), get_reward(reward)

    def ready(self) -> None:
        pass

    def collect(self, prompts: Prompts, cfg: TrainConfig, index: int) -> Tuples:
        return collect_shard(self.lm, self.reward, prompts, cfg, index)


class RayCollect:
    """`train_dga(..., rollouts=RayCollect(load, reward, opts))`: the shards on `opts.workers` Ray actors.

    `load()` builds the LM as the driver built its own (e.g. `functools.partial(load_lm, model, ...)`);
    `reward` is the reward's spec, built by each actor."""

    def __init__(self, load: Callable[[], LM], reward: str, opts: RayOptions):
        self.load, self.reward, self.opts = load, reward, opts

    def __call__(self, prompts: Prompts, cfg: TrainConfig) -> Tuples:
        ray = connect(self.opts)
        shards = shard_prompts(prompts, cfg.rollout_shards)
        collector = ray.remote(Collector).options(**actor_options(self.opts))
        workers = [collector.remote(self.load, self.reward) for _ in range(min(self.opts.workers, len(shards)))]
        try:  # a model that cannot load fails here, once (not retried)
            ray.get([w.ready.options(max_task_retries=0).remote() for w in workers])
            refs = [workers[k % len(workers)].collect.remote(shard, cfg, k) for k, shard in enumerate(shards)]
            waiting = list(refs)
            for _ in tqdm(range(len(refs)), desc="rollouts (ray)", unit="shard"):
                _, waiting = ray.wait(waiting, num_returns=1)
            return join_tuples(ray.get(refs))
        except ray.exceptions.RayError as err:
            raise DGAlignError(f"the Ray rollouts failed: {cause(err)}") from None
        finally:
            for w in workers:
                ray.kill(w)
