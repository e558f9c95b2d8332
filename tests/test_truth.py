import itertools
from fractions import Fraction as F

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxslt.truth as truth

# docs/method.md §7.3 (Aoyagi 2024): widths input→output, rank → (λ, m).
DLN_EXAMPLES = [
    ([1, 1, 1], 0, F(1, 2), 2),
    ([2, 2, 2], 0, F(3, 2), 1),
    ([2, 2, 2], 1, F(2), 2),
    ([3, 3, 3], 0, F(7, 2), 2),
    ([5, 3, 5], 0, F(13, 2), 2),
    ([5, 4, 5], 0, F(8), 1),
    ([4, 3, 8], 0, F(6), 1),
    ([10, 10, 10], 5, F(47), 2),
    ([4, 4, 4, 4], 0, F(11, 2), 3),
    ([20, 20, 20, 20], 5, F(325, 2), 1),
    ([64, 64, 64], 0, F(1536), 1),
    ([100, 100, 100, 100], 0, F(6667, 2), 3),
    ([185, 259, 286, 885, 235, 204, 274, 252], 100, F(20889), 3),
    ([10, 8, 6, 8, 10], 2, F(28), 1),  # an accuracy-benchmark DLN
    ([4, 4, 4], 2, F(15, 2), 1),
]


@pytest.mark.parametrize(("widths", "rank", "lam", "m"), DLN_EXAMPLES)
def test_dln_reference_examples(widths, rank, lam, m):
    got = truth.deep_linear_network(widths, rank)
    assert got == (lam, m)
    assert isinstance(got.llc, F) and type(got.multiplicity) is int
    llc, mult = got  # unpacks as a pair
    assert (llc, mult) == (got.llc, got.multiplicity)


@pytest.mark.parametrize(
    ("H", "lam", "m"),
    [(1, F(1, 2), 2), (2, F(2, 3), 1), (3, F(5, 6), 1), (4, F(1), 2), (5, F(11, 10), 1)],
)
def test_tanh_reference_examples(H, lam, m):
    assert truth.tanh_one_hidden(H) == (lam, m)


def test_tanh_h1_is_normal_crossing_1_1():
    # K = a² E[tanh²(bx)] = a² b² · unit.
    assert truth.tanh_one_hidden(1) == truth.normal_crossing([1, 1])


@pytest.mark.parametrize(
    ("M", "H", "N", "r", "lam", "m"),
    [
        (2, 2, 2, 0, F(3, 2), 1),  # global λ at A = B = 0 (docs/method.md §7)
        (2, 2, 2, 1, F(2), 2),
        (2, 2, 2, 2, F(2), 1),  # full rank is still singular: d/2 = 4
        (5, 3, 5, 0, F(13, 2), 2),
        (4, 3, 8, 0, F(6), 1),  # M + H < N + r branch: H·M/2
        (8, 3, 4, 0, F(6), 1),  # N + H < M + r branch
        (2, 5, 2, 0, F(2), 1),  # M + N < H + r branch: MN/2 (regular in the product)
        (1, 1, 1, 1, F(1, 2), 1),  # K = (ab − c)²: smooth curve of zeros in the plane
    ],
)
def test_rrr_examples(M, H, N, r, lam, m):
    assert truth.reduced_rank_regression(M, H, N, r) == (lam, m)


def test_dln_two_layers_equals_rrr_exhaustive():
    rng = range(1, 9)
    for h0 in rng:
        for h1 in rng:
            for h2 in rng:
                for r in range(min(h0, h1, h2) + 1):
                    dln = truth.deep_linear_network([h0, h1, h2], r)
                    rrr = truth.reduced_rank_regression(M=h0, H=h1, N=h2, rank=r)
                    assert dln == rrr, (h0, h1, h2, r)


@pytest.mark.parametrize(("h0", "h1", "r"), [(1, 1, 0), (3, 5, 2), (7, 4, 4)])
def test_single_layer_is_regular(h0, h1, r):
    assert truth.deep_linear_network([h0, h1], r) == truth.regular(h0 * h1)


widths_st = st.lists(st.integers(1, 30), min_size=3, max_size=6)


@st.composite
def dln_case(draw):
    widths = draw(widths_st)
    return widths, draw(st.integers(0, min(widths)))


@settings(max_examples=200)
@given(dln_case())
def test_dln_reversal_invariant(case):
    widths, r = case
    assert truth.deep_linear_network(widths, r) == truth.deep_linear_network(widths[::-1], r)


@settings(max_examples=200)
@given(dln_case())
def test_dln_bounds(case):
    widths, r = case
    lam, m = truth.deep_linear_network(widths, r)
    d = sum(a * b for a, b in itertools.pairwise(widths))
    assert 0 < lam <= F(d, 2)
    assert 1 <= m <= d
    # λ ≥ half the dimension of the manifold of rank-r H_L×H_0 matrices.
    h0, hl = widths[0], widths[-1]
    assert lam >= F(r * (h0 + hl - r), 2)


@settings(max_examples=200)
@given(dln_case())
def test_dln_rank_reduces_to_rank_zero_on_deficiencies(case):
    # λ(widths, r) = r(H_0 + H_L − r)/2 + λ(widths − r, 0), same m, when every width exceeds r.
    widths, r = case
    r = min(r, min(widths) - 1)
    lam, m = truth.deep_linear_network(widths, r)
    lam0, m0 = truth.deep_linear_network([h - r for h in widths], 0)
    assert lam == F(r * (widths[0] + widths[-1] - r), 2) + lam0
    assert m == m0


@pytest.mark.parametrize(
    ("k", "h", "lam", "m"),
    [
        ((0, 1), None, F(1, 2), 1),
        ((1, 1), None, F(1, 2), 2),
        ((1, 2), None, F(1, 4), 1),
        ((2, 2), None, F(1, 4), 2),
        ((3,), None, F(1, 6), 1),
        ((1, 2), (1, 3), F(1), 2),  # (1+1)/2 = (3+1)/4
        ((0, 1), (5, 0), F(1, 2), 1),  # k = 0 index ignored whatever its h
    ],
)
def test_normal_crossing(k, h, lam, m):
    assert truth.normal_crossing(k, h) == (lam, m)


@pytest.mark.parametrize("d", [1, 2, 7, 100])
def test_regular(d):
    assert truth.regular(d) == (F(d, 2), 1)
    assert truth.normal_crossing([1] * d, [0] * d).llc == F(1, 2)


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: truth.deep_linear_network([3, -1, 3], 0), ValueError, r"widths\[1\] must be >= 1"),
        (lambda: truth.deep_linear_network([3, 0, 3], 0), ValueError, r"widths\[1\] must be >= 1"),
        (lambda: truth.deep_linear_network([3, 2, 3], 3), ValueError, "narrowest width 2"),
        (lambda: truth.deep_linear_network([3, 2, 3], -1), ValueError, "rank must be >= 0"),
        (lambda: truth.deep_linear_network([3], 0), ValueError, "at least 2 entries"),
        (lambda: truth.deep_linear_network([3, 2.0, 3], 0), TypeError, r"widths\[1\] must be an"),
        (lambda: truth.deep_linear_network([3, 2, 3], 1.0), TypeError, "rank must be an integer"),
        (lambda: truth.deep_linear_network([3, True, 3], 0), TypeError, "got bool"),
        (lambda: truth.deep_linear_network(5, 0), TypeError, "sequence of integers"),
        (lambda: truth.reduced_rank_regression(0, 2, 2, 0), ValueError, "M must be >= 1"),
        (lambda: truth.reduced_rank_regression(4, 2, 4, 3), ValueError, "rank=3 exceeds"),
        (lambda: truth.normal_crossing([1, 2], [0]), ValueError, r"len\(h\)=1 != len\(k\)=2"),
        (lambda: truth.normal_crossing([0, 0]), ValueError, "at least one positive"),
        (lambda: truth.normal_crossing([1, -1]), ValueError, r"k\[1\] must be >= 0"),
        (lambda: truth.normal_crossing([1], [-1]), ValueError, r"h\[0\] must be >= 0"),
        (lambda: truth.normal_crossing([]), ValueError, "at least 1 entries"),
        (lambda: truth.regular(0), ValueError, "d must be >= 1"),
        (lambda: truth.tanh_one_hidden(0), ValueError, "H must be >= 1"),
        (lambda: truth.tanh_one_hidden(2.5), TypeError, "H must be an integer"),
    ],
)
def test_bad_inputs(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
