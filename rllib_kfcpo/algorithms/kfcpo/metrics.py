"""Metric names KFCPO's learner logs (as ``learners/<module_id>/<name>``).

Per-minibatch values are averaged over the iteration; counts are summed per iteration.
"""

COS_BEFORE = "reward_cost_cos_before"  # cosine of n_r, n_c in the Fisher metric
COS_AFTER = "reward_cost_cos_after"  # the same after the projection
CONFLICT = "conflict_fraction"  # share of steps where <n_r, n_c>_F < 0
WEIGHT_REWARD = "weight_reward"  # w_r from the margin
WEIGHT_COST = "weight_cost"  # w_c from the margin
DIRECTION_QUAD = "direction_dFd"  # d^T F d of the blended direction
STEP_SIZE = "step_size"  # a, the trust-region step size
QUAD_KL = "kl_quadratic_estimate"  # 0.5 a^2 d^T F d, bounded by trust_region_kl
KL_BEFORE_STEP = "kl_before_step"  # KL(behaviour || current) before the step
KL_AFTER_STEP = "kl_after_step"  # real KL(behaviour || current) after the step
ROLLBACKS = "kl_rollbacks"  # steps undone for good (policy frozen) this iteration (sum)
BACKTRACKS = "kl_backtracks"  # undone tries retried at half the step, this iteration (sum)
POLICY_STEPS = "policy_steps"  # steps kept this iteration (sum)
FROZEN_MINIBATCHES = "minibatches_after_rollback"  # critic-only minibatches (sum)
SKIPPED_STEPS = "skipped_steps"  # non-finite direction or zero step (sum)
KFAC_SECONDS = "kfac_seconds"  # time in curvature, preconditioning and manipulation
MARGIN_COST = "margin_episode_cost"  # the Jc the margin weights used (EMA, margin_cost_ema)
MARGIN_INTEGRAL = "margin_integral"  # the integral term subtracted from the margin
MARGIN_MULTIPLIER = "margin_multiplier"  # lambda of the 'pid' schedule (w_c = l / (1 + l))
STEP_KL = "kl_of_step"  # real KL(before step || after step) of the kept step
# rollback_kl_rows='held_out': the kept step's KL on its own minibatch's rows (kl_of_step
# is then on the held-out rows), and the share of steps checked on held-out rows.
STEP_KL_OWN_ROWS = "kl_of_step_own_rows"
HELD_OUT_CHECKS = "kl_checked_on_held_out_rows"
# held_out_improvement: the step's gain of w_r L_r - w_c L_c on the held-out rows (mean
# over checked tries) and the steps undone because it was <= 0 (sum).
HELD_OUT_GAIN = "held_out_surrogate_gain"
HELD_OUT_REJECTIONS = "held_out_rejections"
# surrogate_clip: share of the minibatch's rows whose reward (cost) gradient is clipped away.
REWARD_CLIPPED_SHARE = "reward_clipped_share"
COST_CLIPPED_SHARE = "cost_clipped_share"
KL_RATIO = "kl_real_over_quadratic"  # running ratio real / quadratic KL of kept steps
COST_REQUIREMENT = "cost_requirement"  # kappa of the span step (share of max cost decrease)
CONSTRAINT_ACTIVE = "cost_requirement_active"  # share of span steps where kappa binds
LOG_STD_MEAN = "log_std_mean"  # mean of a Gaussian policy's log-std after the step
# Cosine (Euclidean) of this minibatch's direction with the previous minibatch's of the same
# iteration: how much of a direction is signal rather than minibatch noise.
REWARD_GRAD_AGREEMENT = "reward_gradient_agreement"  # g_r
COST_GRAD_AGREEMENT = "cost_gradient_agreement"  # g_c
REWARD_NATURAL_AGREEMENT = "reward_natural_agreement"  # n_r = F^-1 g_r
COST_NATURAL_AGREEMENT = "cost_natural_agreement"  # n_c = F^-1 g_c
