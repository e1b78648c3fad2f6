"""Known answers for the report's verdicts (Welch's t-test), their confidence intervals and ``seeds needed``
(:mod:`segexp.tables.report`), worked by hand on small seed lists.

Notation: d = mean_r - mean_b, v = s^2 / n per side (s the sample std), SE = sqrt(v_r + v_b), Welch-Satterthwaite
df = (v_r + v_b)^2 / (v_r^2 / (n_r - 1) + v_b^2 / (n_b - 1)), CI = d -+ t_{0.975, df} x SE. Closed forms of the
quantiles used here: t_{0.975, 1} = tan(0.475 pi) = 12.706; t_{0.975, 2} = 0.95 / sqrt(2 x 0.975 x 0.025) = 4.303.
"""

from __future__ import annotations

import math

import pytest

from segexp.tables.report import (
    BEYOND_MAX_SEEDS,
    MAX_SEEDS_NEEDED,
    OPPOSITE,
    REPRODUCED,
    SINGLE_SEED,
    WITHIN_NOISE,
    DeltaTest,
    pooled_std,
    seeds_needed,
    seeds_text,
    t_quantile,
    verdict,
    welch_test,
)

T1 = math.tan(0.475 * math.pi)                 # t_{0.975, 1}
T2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)       # t_{0.975, 2}


def test_closed_form_quantiles_match_scipy() -> None:
    assert round(T1, 4) == 12.7062 and t_quantile(0.975, 1) == pytest.approx(T1)
    assert round(T2, 4) == 4.3027 and t_quantile(0.975, 2) == pytest.approx(T2)


def test_two_seeds_a_side_that_the_old_2_se_rule_called_reproduced_are_within_noise() -> None:
    row, base = [2.0, 3.0], [0.0, 1.0]
    # d = 2.5 - 0.5 = 2; s^2 = 0.5 a side, v = 0.25 a side: SE = sqrt(0.5) = 0.7071
    d, se = 2.0, math.sqrt(0.5)
    assert abs(d) > 2 * se  # 2 > 1.414: the old rule (|d| > 2 x SE) said "reproduced"
    # t = d / SE = 2.83; df = 0.5^2 / (0.25^2 / 1 + 0.25^2 / 1) = 0.25 / 0.125 = 2; CI = 2 -+ 4.303 x 0.7071
    test = welch_test(row, base)
    assert test is not None
    assert (test.delta, test.se, test.delta / test.se, test.df) == pytest.approx((d, se, 2 * math.sqrt(2), 2.0))
    assert (test.low, test.high) == pytest.approx((2 - T2 * se, 2 + T2 * se))
    assert (test.low, test.high) == pytest.approx((-1.0424, 5.0424), abs=1e-4)
    assert not test.excludes_zero
    assert verdict(+0.6, row, base) == WITHIN_NOISE


def test_three_seeds_a_side_with_a_fractional_df() -> None:
    row, base = [1.0, 2.0, 3.0], [0.0, 0.0, 1.0]
    # mean_r = 2, s_r^2 = (1 + 0 + 1) / 2 = 1, v_r = 1/3; mean_b = 1/3, s_b^2 = (1/9 + 1/9 + 4/9) / 2 = 1/3,
    # v_b = 1/9. d = 5/3, SE^2 = 1/3 + 1/9 = 4/9, SE = 2/3, t = 2.5.
    # df = (4/9)^2 / ((1/3)^2 / 2 + (1/9)^2 / 2) = (16/81) / (5/81) = 3.2, between t_3 = 3.182 and t_4 = 2.776
    test = welch_test(row, base)
    assert test is not None
    assert (test.delta, test.se, test.delta / test.se, test.df) == pytest.approx((5 / 3, 2 / 3, 2.5, 3.2))
    t = t_quantile(0.975, 3.2)
    assert 2.776 < t < 3.182 and t == pytest.approx(3.0728, abs=1e-4)
    # CI = 5/3 -+ 3.0728 x 2/3 = [-0.382, +3.715]: includes 0
    assert (test.low, test.high) == pytest.approx((5 / 3 - t * 2 / 3, 5 / 3 + t * 2 / 3))
    assert (test.low, test.high) == pytest.approx((-0.3819, 3.7152), abs=1e-4)
    assert verdict(+1.0, row, base) == WITHIN_NOISE


@pytest.mark.parametrize(("paper_delta", "expected"), [(+0.6, REPRODUCED), (-0.6, OPPOSITE), (0.0, OPPOSITE)])
def test_an_interval_that_excludes_zero_is_judged_by_the_paper_deltas_sign(paper_delta: float, expected: str) -> None:
    row, base = [2.0, 2.2, 1.8], [1.0, 1.1, 0.9]
    # d = 1.0; s_r^2 = 0.04, v_r = 0.04/3; s_b^2 = 0.01, v_b = 0.01/3; SE = sqrt(0.05/3) = 0.1291
    # df = (0.05/3)^2 / ((0.04/3)^2 / 2 + (0.01/3)^2 / 2) = 0.0025 / 0.00085 = 50/17 = 2.94; t_{0.975, 2.94} = 3.219
    test = welch_test(row, base)
    assert test is not None
    assert (test.delta, test.se, test.df) == pytest.approx((1.0, math.sqrt(0.05 / 3), 50 / 17))
    assert (test.low, test.high) == pytest.approx((0.5845, 1.4155), abs=1e-4)  # 1 -+ 3.219 x 0.1291
    assert verdict(paper_delta, row, base) == expected


def test_one_side_without_spread_has_the_other_sides_df() -> None:
    # v_b = 0: df = v_r^2 / (v_r^2 / (n_r - 1)) = n_r - 1 = 1. d = 2, s_r^2 = 2, SE = sqrt(2/2) = 1: CI 2 -+ 12.706
    test = welch_test([1.0, 3.0], [0.0, 0.0])
    assert test is not None
    assert (test.delta, test.se, test.df, test.low, test.high) == pytest.approx((2.0, 1.0, 1.0, 2 - T1, 2 + T1))
    assert verdict(+0.6, [1.0, 3.0], [0.0, 0.0]) == WITHIN_NOISE


@pytest.mark.parametrize(("paper_delta", "row", "base", "expected"), [
    (+0.6, [2.0, 2.0], [0.0, 0.0], REPRODUCED),      # d = 2: the interval is the point 2, which excludes 0
    (-0.6, [2.0, 2.0], [0.0, 0.0], OPPOSITE),
    (+0.6, [1.5, 1.5, 1.5], [1.5, 1.5], WITHIN_NOISE),  # d = 0: the point 0
])
def test_no_spread_on_either_side_makes_the_interval_a_point(
        paper_delta: float, row: list[float], base: list[float], expected: str) -> None:
    d = row[0] - base[0]
    assert welch_test(row, base) == DeltaTest(delta=d, se=0.0, df=None, low=d, high=d)
    assert verdict(paper_delta, row, base) == expected


@pytest.mark.parametrize(("row", "base"), [([5.0], [1.0, 1.1]), ([5.0, 5.1], [1.0]), ([5.0], [1.0])])
def test_fewer_than_two_seeds_on_a_side_is_a_single_seed(row: list[float], base: list[float]) -> None:
    assert welch_test(row, base) is None
    assert verdict(+0.6, row, base) == SINGLE_SEED


def test_pooled_std() -> None:
    # sum of squares about each side's mean over n_r + n_b - 2 degrees of freedom
    assert pooled_std([1.0, 3.0], [0.0, 2.0]) == pytest.approx(math.sqrt((2 + 2) / 2))
    assert pooled_std([1.0, 2.0, 3.0], [0.0, 0.0, 1.0]) == pytest.approx(math.sqrt((2 + 2 / 3) / 4))
    assert pooled_std([5.0], [0.0, 2.0]) == pytest.approx(math.sqrt(2 / 1))  # one seed adds no spread, no df
    assert pooled_std([5.0], [1.0]) is None


@pytest.mark.parametrize(("paper_delta", "row", "base", "expected"), [
    # s = sqrt(2): need t_{2n-2} x sqrt(2) x sqrt(2/n) = 2 t_{2n-2} / sqrt(n) < |paper delta|.
    # 4.0: n = 2: 2 x 4.303 / 1.414 = 6.09; n = 3: 2 x t_4 / sqrt(3) = 2 x 2.776 / 1.732 = 3.21 < 4
    (4.0, [1.0, 3.0], [0.0, 2.0], 3),
    # 1.0: n = 16: 2 x t_30 / 4 = 2 x 2.0423 / 4 = 1.021; n = 17: 2 x t_32 / sqrt(17) = 2 x 2.0369 / 4.123 = 0.988
    (1.0, [1.0, 3.0], [0.0, 2.0], 17),
    (-1.0, [1.0, 3.0], [0.0, 2.0], 17),               # the size of the delta counts, not its sign
    (1.0, [5.0], [0.0, 2.0], 17),                     # one seed of the row: the baseline's spread alone
    (0.01, [1.0, 3.0], [0.0, 2.0], BEYOND_MAX_SEEDS),  # about 4 x 1.96^2 / 0.01^2 = 153,664 seeds
    (0.1, [2.0, 2.0], [0.0, 0.0], 2),                 # no spread measured: the fewest seeds that give a verdict
    (0.0, [1.0, 3.0], [0.0, 2.0], None),              # a zero paper delta is never resolved
    (None, [1.0, 3.0], [0.0, 2.0], None),
    (1.0, [5.0], [1.0], None),                        # no spread measured yet
])
def test_seeds_needed(paper_delta: float | None, row: list[float], base: list[float], expected: int | None) -> None:
    assert seeds_needed(paper_delta, row, base) == expected


def test_seeds_needed_text() -> None:
    assert [seeds_text(n) for n in (None, 2, 17, MAX_SEEDS_NEEDED, BEYOND_MAX_SEEDS)] == [
        "", "2", "17", "1000", ">1000"]
