"""exp2, tanh and sigmoid in float32 as branch-free polynomials, so that the compiled loops around them vectorise.

Numba calls the C library's scalar ``expf`` and ``tanhf`` (without Intel's SVML, which this tier does not
assume), one element at a time; written as polynomials, the same loops run 16 elements per AVX-512
instruction.

    exp2(x):  n = floor(x + 1/2),  f = x - n in [-1/2, 1/2],  2^x = p(f) 2^n
              p: degree 6, Chebyshev interpolation of 2^f on [-1/2, 1/2] (|p(f) / 2^f - 1| < 2.6e-9 in exact
              arithmetic); 2^n is built from its exponent bits ((n + 127) << 23); x is clamped to [-126, 127],
              the normal range, so exp2 of anything below -126 is 2^-126 rather than 0 (or a denormal)
              bound: relative error <= 2e-7 against float64 on [-126, 127] (measured 1.0e-7;
              tests/kernels/test_compiled_approx.py)
    tanh(x):  |x| < 0.55: p(x) / q(x), p odd of degree 13, q even of degree 6 (Eigen's float tanh)
              |x| >= 0.55: sign(x) (1 - 2 r),  r = 1 / (exp(2 |x|) + 1)  (1 - |tanh| as precise as r)
              bound: relative error <= 4e-7 against float64 (measured 3.2e-7; NumPy's float32 tanh: 1.1e-7),
              so absolute error <= 4e-7 (the same tests)
    the GELU's pair, from one exp2 and one division: r as above, tanh(x) = +-(1 - 2 r) to 1.2e-7 absolutely
              (all the GELU's backward pass needs), and sigmoid(2 x) = (1 + tanh(x)) / 2 = 1 - r for x >= 0,
              r for x < 0, without cancellation: relative error <= 4e-7 + 1.5e-7 |x| (the rounding of
              2 |x| log2 e, amplified by exp2) for x >= -40

Only for float32: each function takes and returns float32 scalars, and is inlined into the loops that call it.
The selects (|x| < 0.55, the sign) compile to vector blends. Numba's disk cache checks the date of the file
that holds a compiled loop, not of this one: after editing this file, delete kernels/compiled/__pycache__.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

F = np.float32
# The fast-math freedoms the loops take: reassociation (vectorised sums), contraction into fused multiply-adds
# and the sign of zero; not "no NaNs or infinities" nor approximate reciprocals and square roots, under which
# an overflowed activation (1/sqrt(inf) by rsqrt and a Newton step) becomes NaN where NumPy gives 0.
FASTMATH = {"reassoc", "contract", "nsz"}
# 2^f on [-1/2, 1/2], lowest power first
_P0, _P1, _P2, _P3 = F(1.0), F(0.6931472067028323), F(0.2402265092228826), F(0.055503272266708814)
_P4, _P5, _P6 = F(0.009618056678584931), F(0.001340042817725558), F(0.00015461444676459477)
_LO, _HI, _HALF = F(-126.0), F(127.0), F(0.5)
# tanh: Eigen's generic_fast_tanh_float (odd numerator alpha, even denominator beta)
_A1, _A3, _A5 = F(4.89352455891786e-03), F(6.37261928875436e-04), F(1.48572235717979e-05)
_A7, _A9, _A11 = F(5.12229709037114e-08), F(-8.60467152213735e-11), F(2.00018790482477e-13)
_A13 = F(-2.76076847742355e-16)
_B0, _B2, _B4, _B6 = F(4.89352518554385e-03), F(2.26843463243900e-03), F(1.18534705686654e-04), F(1.19825839466702e-06)
_BIG = F(44.0)  # exp(2 x 44) = 2^127: the largest power of two exp2_f32 makes
_TWO_LOG2_E, _TWO, _ONE, _ZERO, _SWITCH = F(2.0 / np.log(2.0)), F(2.0), F(1.0), F(0.0), F(0.55)


@intrinsic
def _bits_to_float32(typingctx, bits):
    """Reinterpret an int32's bits as a float32 (one vectorisable bitcast; no scalar call)."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@njit(inline="always", fastmath=FASTMATH, nogil=True, cache=True, error_model="numpy")
def exp2_f32(x):
    """2^x for a float32 x, relative error <= 2e-7 on [-126, 127] (see the module docstring)."""
    x = min(max(x, _LO), _HI)
    n = np.floor(x + _HALF)  # float32
    f = x - n  # [-1/2, 1/2]
    p = _P6 * f + _P5
    p = p * f + _P4
    p = p * f + _P3
    p = p * f + _P2
    p = p * f + _P1
    p = p * f + _P0
    return p * _bits_to_float32((np.int32(n) + np.int32(127)) << np.int32(23))


@njit(inline="always", fastmath=FASTMATH, nogil=True, cache=True, error_model="numpy")
def tanh_sigmoid_f32(x):
    """(tanh(x), sigmoid(2 x)) for a float32 x from one exp2 and one division: sigmoid(2 x) = (1 + tanh(x)) / 2
    to 4e-7 + 1.5e-7 |x| relative, also where 1 + tanh(x) cancels (x << 0), and tanh(x) = +-(1 - 2 r) to 1.2e-7
    absolutely (not relatively near 0: tanh_f32 is); see the module docstring."""
    a = min(abs(x), _BIG)
    r = _ONE / (exp2_f32(a * _TWO_LOG2_E) + _ONE)  # 1 / (exp(2 |x|) + 1), accurate relative even when tiny
    r = r * F(a < _BIG)  # 0 beyond the clamp (below 2^-127 anyway), so that sigmoid(-huge) x is 0, not x 2^-127
    p = F(x >= _ZERO)  # 1 or 0: a blend, not a branch
    sign = p + p - _ONE
    return sign * (_ONE - _TWO * r), p - sign * r  # (+-(1 - 2 r), 1 - r or r)


@njit(inline="always", fastmath=FASTMATH, nogil=True, cache=True, error_model="numpy")
def tanh_f32(x):
    """tanh(x) for a float32 x, relative error <= 4e-7 (see the module docstring)."""
    a = min(abs(x), _BIG)
    tail = _ONE - _TWO / (exp2_f32(a * _TWO_LOG2_E) + _ONE)  # tanh |x| = 1 - 2 / (exp(2 |x|) + 1)
    near = _rational_tanh(min(a, _SWITCH))  # near 0, where the tail cancels; both computed, then blended
    w = F(a < _SWITCH)  # 1 or 0
    t = w * near + (_ONE - w) * tail
    return t if x >= _ZERO else -t


@njit(inline="always", fastmath=FASTMATH, nogil=True, cache=True, error_model="numpy")
def _rational_tanh(x):
    """tanh(x) near 0 (here |x| < 0.55), as Eigen's rational p(x) / q(x)."""
    x2 = x * x
    p = _A13 * x2 + _A11
    p = p * x2 + _A9
    p = p * x2 + _A7
    p = p * x2 + _A5
    p = p * x2 + _A3
    p = p * x2 + _A1
    p = p * x
    q = _B6 * x2 + _B4
    q = q * x2 + _B2
    q = q * x2 + _B0
    return p / q
