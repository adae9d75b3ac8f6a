"""The PID multiplier against hand-computed sequences (Stooke et al. 2020, OmniSafe order)."""

from __future__ import annotations

import math

import pytest

from rllib_kfcpo.safe.pid_lagrange import PIDLagrangian

#: Gains chosen so every step can be done by hand (worked out in the comments below).
HAND = dict(kp=1.0, ki=0.5, kd=2.0, d_delay=2, delta_p_ema_alpha=0.5, delta_d_ema_alpha=0.5,
            sum_norm=False, diff_norm=False, penalty_max=100.0, init=0.0)
COSTS = [20.0, 30.0, 10.0, 0.0, 0.0, 0.0]
LIMIT = 10.0
# Worked by hand: delta = Jc - 10; I += 0.5 delta (>= 0); P = P/2 + delta/2;
# C = C/2 + Jc/2; D = max(0, C - C_two_updates_ago) with C_-1 = C_0 = 0;
# lambda = max(0, P + I + 2 D).
#  1: delta 10  I 5   P 5        C 10   D 10-0=10  -> 5 + 5 + 20        = 30
#  2: delta 20  I 15  P 12.5     C 20   D 20-0=20  -> 12.5 + 15 + 40    = 67.5
#  3: delta 0   I 15  P 6.25     C 15   D 15-10=5  -> 6.25 + 15 + 10    = 31.25
#  4: delta -10 I 10  P -1.875   C 7.5  D <0 -> 0  -> -1.875 + 10       = 8.125
#  5: delta -10 I 5   P -5.9375  C 3.75 D 0        -> -0.9375 -> clamp  = 0
#  6: delta -10 I 0   P -7.96875 C 1.875 D 0       -> < 0 -> clamp      = 0
HAND_LAMBDAS = [30.0, 67.5, 31.25, 8.125, 0.0, 0.0]


def run(pid: PIDLagrangian, costs: list[float], limit: float = LIMIT) -> list[float]:
    return [pid.update(c, limit) for c in costs]


def test_sequence_equals_the_hand_computed_one():
    pid = PIDLagrangian(**HAND)
    assert pid.value == 0.0  # OmniSafe: the penalty is 0 until the first update
    assert run(pid, COSTS) == pytest.approx(HAND_LAMBDAS, abs=1e-12)
    assert pid.integral == 0.0  # 5 - 5: the integral is clamped at 0, never negative


def test_omnisafe_defaults_first_step():
    # CPPOPID defaults; Jc 35 vs limit 25: I = 0.001 + 0.01 * 10 = 0.101,
    # P = 0.05 * 10 = 0.5, C = 0.05 * 35 = 1.75, D = 1.75 - 0 = 1.75,
    # lambda = 0.1 * 0.5 + 0.101 + 0.01 * 1.75 = 0.1685.
    pid = PIDLagrangian()
    assert pid.update(35.0, 25.0) == pytest.approx(0.1685, abs=1e-12)


def test_clamped_at_penalty_max_only_without_sum_and_diff_norm():
    capped = PIDLagrangian(**{**HAND, "penalty_max": 50.0})
    assert run(capped, COSTS) == pytest.approx([30.0, 50.0, 31.25, 8.125, 0.0, 0.0])
    # OmniSafe applies penalty_max only when neither sum_norm nor diff_norm is on.
    summed = PIDLagrangian(**{**HAND, "penalty_max": 50.0, "sum_norm": True})
    assert run(summed, COSTS)[1] == pytest.approx(67.5)


def test_diff_norm_clamps_integral_and_lambda_to_one():
    pid = PIDLagrangian(**{**HAND, "diff_norm": True})
    # 1: I = min(1, 5) = 1, lambda = min(1, 5 + 1 + 20) = 1; 4: I = max(0, 1 - 5) = 0,
    # P = -1.875, D = 0 -> lambda = 0.
    values = run(pid, COSTS)
    assert values[:3] == [1.0, 1.0, 1.0]
    assert pid.integral == 0.0
    assert values[3:] == [0.0, 0.0, 0.0]


def test_multiplier_max_clamps_integral_and_lambda_so_the_integral_unwinds_from_the_cap():
    pid = PIDLagrangian(**HAND, multiplier_max=12.0)
    # HAND's steps with I and lambda both clamped to [0, 12]:
    #  1: I min(5, 12) = 5     lambda min(30, 12)                      = 12
    #  2: I min(15, 12) = 12   lambda min(12.5 + 12 + 40, 12)          = 12
    #  3: I 12                 lambda min(6.25 + 12 + 10, 12)          = 12
    #  4: I 12 - 5 = 7         lambda -1.875 + 7 (uncapped: I 10, 8.125) = 5.125
    #  5: I 2                  lambda -5.9375 + 2 -> clamp             = 0
    #  6: I max(0, 2 - 5) = 0  lambda                                  = 0
    assert run(pid, COSTS) == pytest.approx([12.0, 12.0, 12.0, 5.125, 0.0, 0.0], abs=1e-12)
    assert pid.integral == 0.0
    # With sum_norm (OmniSafe's default, where penalty_max is ignored) the cap still holds.
    summed = PIDLagrangian(**{**HAND, "sum_norm": True}, multiplier_max=12.0)
    assert max(run(summed, COSTS)) == 12.0


def test_unwind_gain_replaces_ki_only_below_the_limit():
    pid = PIDLagrangian(**HAND, ki_unwind=1.0)
    # HAND's steps with the integral gain 1.0 instead of 0.5 while delta < 0:
    #  1-3: delta 10, 20, 0 (>= 0: ki 0.5)   as HAND: 30, 67.5, 31.25 (I 15)
    #  4: delta -10 I 15 - 10 = 5            lambda -1.875 + 5 (symmetric: I 10)  = 3.125
    #  5: delta -10 I max(0, 5 - 10) = 0     lambda -5.9375 -> clamp              = 0
    #  6:           I 0                      lambda                               = 0
    values = run(pid, COSTS[:5])
    assert values == pytest.approx([30.0, 67.5, 31.25, 3.125, 0.0], abs=1e-12)
    assert pid.integral == 0.0  # symmetric, it would still hold 5 here
    symmetric = PIDLagrangian(**HAND, ki_unwind=None)
    assert run(symmetric, COSTS) == pytest.approx(HAND_LAMBDAS, abs=1e-12)


def test_unknown_cost_changes_nothing():
    pid = PIDLagrangian(**HAND)
    run(pid, COSTS[:2])
    before = pid.state_dict()
    assert pid.update(math.nan, LIMIT) == 67.5
    assert pid.state_dict() == before


def test_state_round_trip_continues_the_same_sequence():
    pid = PIDLagrangian(**HAND)
    run(pid, COSTS[:3])
    fresh = PIDLagrangian(**HAND)
    fresh.load_state_dict(pid.state_dict())
    assert fresh.value == pid.value == 31.25
    assert run(fresh, COSTS[3:]) == pytest.approx(HAND_LAMBDAS[3:], abs=1e-12)
    with pytest.raises(ValueError, match="lacks"):
        fresh.load_state_dict({"value": 1.0, "optimizer": {}})  # a PPOLag multiplier's state


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"kp": -0.1}, "pid_kp"), ({"ki": math.nan}, "pid_ki"), ({"kd": True}, "pid_kd"),
    ({"d_delay": 0}, "pid_d_delay"), ({"delta_p_ema_alpha": 1.0}, "pid_delta_p_ema_alpha"),
    ({"penalty_max": 0.0}, "penalty_max"), ({"init": -1.0}, "lagrangian_multiplier_init"),
    ({"multiplier_max": 0.0}, "multiplier_max"), ({"multiplier_max": math.nan}, "multiplier_max"),
    ({"ki_unwind": -0.5}, "ki_unwind"), ({"ki_unwind": math.inf}, "ki_unwind"),
])
def test_bad_gains_are_refused(kwargs, name):
    with pytest.raises(ValueError, match=name):
        PIDLagrangian(**kwargs)
