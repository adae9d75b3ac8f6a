"""Names shared by every safe algorithm: batch columns, config keys and metric keys.

Metric keys follow RLlib's conventions: per-episode values logged on the env runners
appear on the driver as ``env_runners/<key>``; learner values as
``learners/<module_id>/<key>``.
"""

# --- Train-batch columns (learner connector pipeline) ---------------------------------
#: Raw per-step cost ``c_t`` emitted by the env as ``info["cost"]`` after step ``t``.
COSTS = "costs"
#: Cost advantages (GAE over costs with ``cost_gamma``/``cost_lambda``), standardised or
#: centred (``cost_advantages``).
COST_ADVANTAGES = "cost_advantages"
#: Cost value targets (GAE returns over costs) for the cost critic.
COST_VALUE_TARGETS = "cost_value_targets"
#: Position of the row in its learner's train batch of this iteration (0, 1, ...): lets a
#: learner tell a minibatch's rows from the rest of the iteration's (KFCPO's held-out KL).
ROW_INDEX = "row_index"

# --- Keys passed from the driver to the learners via `timesteps` ----------------------
#: Windowed mean episode cost Jc (undiscounted sum of raw costs per episode), the value
#: every constraint rule in this package compares with ``cost_limit``.
EPISODE_COST_FOR_LEARNER = "safe_episode_cost_mean"

# --- Env-runner metrics (appear as env_runners/<key>) ---------------------------------
EPISODE_COST_MEAN = "episode_cost_mean"
EPISODE_COST_MAX = "episode_cost_max"
EPISODE_COST_MIN = "episode_cost_min"
#: Mean cost of the last ``cost_window_episodes`` finished episodes (logged by the driver
#: under env_runners/), the Jc the learners receive.
EPISODE_COST_WINDOW_MEAN = "episode_cost_window_mean"

# --- Learner metrics (appear as learners/<module_id>/<key>) ---------------------------
COST_VF_LOSS_KEY = "cost_vf_loss"
COST_VF_EXPLAINED_VAR_KEY = "cost_vf_explained_var"
EPISODE_COST_SEEN_KEY = "episode_cost_seen_by_learner"
COST_LIMIT_KEY = "cost_limit"
LAGRANGE_MULTIPLIER_KEY = "lagrange_multiplier"
MEAN_KL_KEY = "mean_kl"
