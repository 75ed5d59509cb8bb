"""Built-in rewards: the `REWARDS` table and `get_reward`, which parses a reward spec into a weighted sum.

Every reward is a batched callable `(prompts, completions) -> Tensor (B,)` float32, higher is better.
A table entry names its factory as "module:attr", imported only when the reward is asked for.
"""

from dgalign.rewards.spec import WeightedSum, describe_rewards, get_reward, reads_references, reward_names
from dgalign.rewards.table import REWARDS, RewardInfo

__all__ = ["REWARDS", "RewardInfo", "WeightedSum", "describe_rewards", "get_reward", "reads_references",
           "reward_names"]
