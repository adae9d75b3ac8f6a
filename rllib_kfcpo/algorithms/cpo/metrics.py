"""Metric names CPO's learner logs (as ``learners/<module_id>/<name>``), once per iteration."""

OPTIM_CASE = "cpo_optim_case"  # OmniSafe's case: 0 recovery ... 3/4 plain TRPO step
LAMBDA_STAR = "cpo_lambda"  # dual variable of the trust region
NU_STAR = "cpo_nu"  # dual variable of the cost constraint (recovery: its step size)
CONSTRAINT_VALUE = "cpo_c"  # c = (Jc - d) / mean episode length
Q = "cpo_q"  # x'(F + damping) x with x = F^-1 g
R = "cpo_r"  # g'F^-1 b
S = "cpo_s"  # b'F^-1 b
ACCEPTED_AT = "line_search_accepted_at"  # 1-based line-search step taken, 0 = none
STEP_FRACTION = "line_search_step_fraction"  # decay^(k-1) of the accepted step, 0 = none
KL_AFTER_STEP = "kl_after_step"  # real mean KL(pi_old || pi_new) of the taken step
REWARD_IMPROVEMENT = "surrogate_reward_improvement"  # reward surrogate change of the step
COST_CHANGE = "surrogate_cost_change"  # cost surrogate change of the step
POLICY_STEP_SECONDS = "policy_step_seconds"  # gradients + CG + closed form + line search
CG_SECONDS = "cg_seconds"  # the two conjugate-gradient solves (FVPs included)
