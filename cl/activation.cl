// activation.cl: ACT_APPLY(T, v), the activation of -D ACT (and its parameters ACT_A, ACT_B,
// ACT_A_ZERO, ACT_A_NAN, ACT_ALL_NAN). common.cl includes it for every kernel's store; a kernel that
// applies a second activation (squeeze_excitation.cl) redefines ACT and its parameters and includes
// it once more (program.py inlines a file again where it says so).
// clconv: include again
#undef ACT_APPLY

// The activation every kernel's store applies (-D ACT=<code>, parameters ACT_A/ACT_B as exact literals;
// clconv/ops/activation.py is the host's side of this table). Written with torch's formulas so that
// NaN and Inf propagate as in torch: comparisons rather than fmin/fmax (which drop NaN), x * sigmoid(x)
// for silu (so silu(-inf) is NaN as torch's), expm1 for elu.
//   1 relu  2 relu6  3 silu  4 gelu (erf)  5 gelu (tanh)  6 sigmoid  7 tanh  8 hardswish  9 hardsigmoid
//   10 leaky_relu(ACT_A)  11 elu(ACT_A)  12 clamp(ACT_A, ACT_B)  13 sqrt (clconv.sqrt: a math
//   function, not offered as an activation=)  14 softplus(beta ACT_A, threshold ACT_B)  15 mish
//   16 selu (alpha ACT_A, scale ACT_B)  17 celu (alpha ACT_A, 1 / alpha ACT_B)  18 logsigmoid
//   19 softsign  20 tanhshrink  21 hardshrink(lambda ACT_A)  22 softshrink(lambda ACT_A)
//   math functions (clconv.abs, exp, log, rsqrt; compile fuses them as it does activations):
//   23 abs  24 exp  25 log  26 rsqrt  27 erf  28 threshold (x <= ACT_A ? ACT_B : x, torch's)
#ifndef ACT
#define ACT 0
#endif
#ifndef ACT_A
#define ACT_A 0.0
#endif
#ifndef ACT_B
#define ACT_B 0.0
#endif
#ifndef ACT_NONE  // (the codes and helpers once: a second inclusion only re-derives ACT_APPLY)
#define ACT_NONE 0
#define ACT_RELU 1
#define ACT_RELU6 2
#define ACT_SILU 3
#define ACT_GELU 4
#define ACT_GELU_TANH 5
#define ACT_SIGMOID 6
#define ACT_TANH 7
#define ACT_HARDSWISH 8
#define ACT_HARDSIGMOID 9
#define ACT_LEAKY_RELU 10
#define ACT_ELU 11
#define ACT_CLAMP 12
#define ACT_SQRT 13
#define ACT_SOFTPLUS 14
#define ACT_MISH 15
#define ACT_SELU 16
#define ACT_CELU 17
#define ACT_LOGSIGMOID 18
#define ACT_SOFTSIGN 19
#define ACT_TANHSHRINK 20
#define ACT_HARDSHRINK 21
#define ACT_SOFTSHRINK 22
#define ACT_ABS 23
#define ACT_EXP 24
#define ACT_LOG 25
#define ACT_RSQRT 26
#define ACT_ERF 27
#define ACT_THRESHOLD 28
// Legacy switch: -D RELU is ACT=1.
#if defined(RELU) && ACT == 0
#undef ACT
#define ACT 1
#endif

// relu6(v) without fmin/fmax: NaN stays NaN. Scalar or vector: on vectors ?: selects per lane.
#define ACT_CLIP(v, lo, hi) ((v) < (lo) ? (lo) : ((v) > (hi) ? (hi) : (v)))

// tanh, exactly +-1 from the first float whose correctly rounded tanh is (|v| >= 9.0108404, where
// torch's is): PoCL's float tanh stops one ulp short of 1 there, which made gelu's tanh form
// -3e-8 * v instead of -0 for large negative v, and -inf instead of NaN at -inf. NaN stays NaN.
// Its double tanh reaches 1 as torch's does.
#ifdef USE_FP64
#define SAT_TANH(T, v) tanh(v)
#else
#define SAT_TANH(T, v) (fabs(v) >= (T)0x1.2058cep+3f ? copysign((T)1, (v)) : tanh(v))
#endif
#endif  // ACT_NONE

// ACT_APPLY(T, v): the activation of v as an expression of type T, a scalar or a vector type (the
// vector stores of gemm_packed.cl and conv_grouped.cl apply it to whole vectors: the builtins exp,
// erf, tanh, expm1 are overloaded for vectors and ?: selects lane by lane, so relu stays one select).
// v must be a plain variable (it is evaluated more than once).
#if ACT == ACT_NONE
#define ACT_APPLY(T, v) (v)
#elif ACT == ACT_RELU
#define ACT_APPLY(T, v) (((v) < (T)0) ? (T)0 : (v))
#elif ACT == ACT_RELU6
#define ACT_APPLY(T, v) ACT_CLIP(v, (T)0, (T)6)
#elif ACT == ACT_SILU
#define ACT_APPLY(T, v) ((v) * ((T)1 / ((T)1 + exp(-(v)))))
#elif ACT == ACT_GELU
// (+inf at +inf, as torch's double kernel and its float one on AVX2; its AVX-512 float kernel
// gives NaN there)
#define ACT_APPLY(T, v) ((T)0.5 * (v) * ((T)1 + erf((v) * (T)0.70710678118654752440)))
#elif ACT == ACT_GELU_TANH
#define ACT_APPLY(T, v)                                                                       \
    ((T)0.5 * (v) *                                                                           \
     ((T)1 + SAT_TANH(T, (T)0.79788456080286535588 * ((v) + (T)0.044715 * (v) * (v) * (v)))))
#elif ACT == ACT_SIGMOID
#define ACT_APPLY(T, v) ((T)1 / ((T)1 + exp(-(v))))
#elif ACT == ACT_TANH
#define ACT_APPLY(T, v) SAT_TANH(T, v)
#elif ACT == ACT_HARDSWISH
#define ACT_APPLY(T, v) ((v) * ACT_CLIP((v) + (T)3, (T)0, (T)6) / (T)6)
#elif ACT == ACT_HARDSIGMOID
#define ACT_APPLY(T, v) (ACT_CLIP((v) + (T)3, (T)0, (T)6) / (T)6)
#elif ACT == ACT_LEAKY_RELU && defined(ACT_A_ZERO)
// A slope of +-0 (ACT_A_ZERO its sign, +-1): v * 0 written out, since Mesa's compiler (rusticl)
// folds a product with a literal 0.0 to 0.0, dropping NaN, -inf * 0 = NaN and the zero's sign
#define ACT_APPLY(T, v) \
    (((v) > (T)0) ? (v) : (isfinite(v) ? copysign((T)0, (v) * (T)(ACT_A_ZERO)) : (T)NAN))
#elif ACT == ACT_LEAKY_RELU
#define ACT_APPLY(T, v) (((v) > (T)0) ? (v) : (v) * (T)(ACT_A))
#elif ACT == ACT_ELU && defined(ACT_A_ZERO)
// alpha +-0 (as leaky_relu's): below 0 the zero of alpha's sign times expm1's negative one
#define ACT_APPLY(T, v) \
    ((((v) >= (T)0) || isnan(v)) ? (v) : copysign((T)0, (T)(-(ACT_A_ZERO))))
#elif ACT == ACT_ELU
// (v >= 0: +-0 stays itself whatever alpha's sign, as torch's vectorised kernel)
#define ACT_APPLY(T, v) (((v) >= (T)0) ? (v) : (T)(ACT_A) * expm1(v))
#elif ACT == ACT_CLAMP && defined(ACT_ALL_NAN)
// a NaN bound: torch's clamp is NaN everywhere (the comparisons of ACT_CLIP are false with NaN)
#define ACT_APPLY(T, v) ((v) + (T)NAN)
#elif ACT == ACT_CLAMP
#define ACT_APPLY(T, v) ACT_CLIP(v, (T)(ACT_A), (T)(ACT_B))
#elif ACT == ACT_SQRT
#define ACT_APPLY(T, v) sqrt(v)
#elif ACT == ACT_SOFTPLUS && defined(ACT_A_ZERO)
// beta +-0 (as leaky_relu's, Mesa folds x * 0.0): x * beta is +-0 for finite x, then
// log1p(exp(0)) / +-0 = +-inf; NaN for non-finite x
#define ACT_APPLY(T, v)                                                                     \
    (isfinite(v) ? (((T)0 > (T)(ACT_B)) ? (v) : copysign((T)INFINITY, (T)(ACT_A_ZERO)))   \
                 : (T)NAN)
#elif ACT == ACT_SOFTPLUS
// torch: x * beta > threshold ? x : log1p(exp(x * beta)) / beta
#define ACT_APPLY(T, v) \
    (((v) * (T)(ACT_A) > (T)(ACT_B)) ? (v) : log1p(exp((v) * (T)(ACT_A))) / (T)(ACT_A))
#elif ACT == ACT_MISH
// torch: x * tanh(log1p(exp(x))); mish(+inf) = +inf needs tanh(inf) exactly 1 (SAT_TANH)
#define ACT_APPLY(T, v) ((v) * SAT_TANH(T, log1p(exp(v))))
#elif ACT == ACT_SELU
// torch's elu kernel with negcoef = alpha * scale (rounded to T each, as torch's opmath), poscoef = scale
#define ACT_APPLY(T, v) \
    (((v) <= (T)0) ? expm1(v) * ((T)(ACT_A) * (T)(ACT_B)) : (v) * (T)(ACT_B))
#elif ACT == ACT_CELU
// torch: elu with negcoef = alpha, input scale = 1 / alpha (computed in double, rounded to T)
#define ACT_APPLY(T, v) (((v) >= (T)0) ? (v) : expm1((v) * (T)(ACT_B)) * (T)(ACT_A))
#elif ACT == ACT_LOGSIGMOID
// torch: min(x, 0) - log1p(exp(-|x|)) (NaN stays NaN through the second term)
#define ACT_APPLY(T, v) ((((v) < (T)0) ? (v) : (T)0) - log1p(exp(-fabs(v))))
#elif ACT == ACT_SOFTSIGN
#define ACT_APPLY(T, v) ((v) / ((T)1 + fabs(v)))
#elif ACT == ACT_TANHSHRINK
#define ACT_APPLY(T, v) ((v) - SAT_TANH(T, v))
#elif ACT == ACT_HARDSHRINK
// torch: 0 inside [-lambda, lambda], x outside (NaN: outside)
#define ACT_APPLY(T, v) (((v) >= -(T)(ACT_A) && (v) <= (T)(ACT_A)) ? (T)0 : (v))
#elif ACT == ACT_SOFTSHRINK
// torch: x - lambda above, x + lambda below, x * 0 between (NaN stays NaN, -0 stays -0); x * 0
// written as a select, which Mesa's llvmpipe compiler does not fold to 0 (it did x * 0)
#define ACT_APPLY(T, v)                                                                       \
    (((v) > (T)(ACT_A)) ? (v) - (T)(ACT_A)                                                    \
                        : (((v) < -(T)(ACT_A)) ? (v) + (T)(ACT_A)                             \
                                               : (isnan(v) ? (v) : copysign((T)0, (v)))))
#elif ACT == ACT_ABS
#define ACT_APPLY(T, v) fabs(v)
#elif ACT == ACT_EXP
#define ACT_APPLY(T, v) exp(v)
#elif ACT == ACT_LOG
#define ACT_APPLY(T, v) log(v)
#elif ACT == ACT_RSQRT
// 1 / sqrt (correctly rounded sqrt, then the division): OpenCL's rsqrt may be less accurate
#define ACT_APPLY(T, v) ((T)1 / sqrt(v))
#elif ACT == ACT_ERF
#define ACT_APPLY(T, v) erf(v)
#elif ACT == ACT_THRESHOLD
#define ACT_APPLY(T, v) (((v) <= (T)(ACT_A)) ? (T)(ACT_B) : (v))
#else
#error "unknown ACT"
#endif
