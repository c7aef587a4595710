"""`python -m clconv.tools.sanitize`: every kernel file in cl/ under Oclgrind, checked for invalid
memory accesses, data races and wrong results (`make sanitize`).

Oclgrind (https://github.com/jrprice/Oclgrind) is an OpenCL device simulator: it interprets each
work-item and reports every out-of-bounds or unallocated access and, with --data-races, every pair
of work-items that touch one address without synchronisation. Run outside Oclgrind, this module
re-runs itself as `oclgrind --data-races --check-api python -m clconv.tools.sanitize`.

Each case runs clconv's public API (or, for kernels with no path on Oclgrind's device, the internal
function that launches them) on tiny shapes and compares the result with the numpy float64 oracle
of the source checkout's tests/reference.py within tests/tolerance.py's tolerances (exactly for
data movement). The cases cover each kernel's -D families: padding modes, groups and depthwise,
float32/float64, the 64-bit index path (`FORCE_INDEX_T = "long"`), GEMM edge tiles, every
algorithm (depthwise, pointwise and split-K included), transposed convolutions, both gradients
(and clconv.ops.grad_paths' kernels), pooling, elementwise layers, the channel norm, im2col/col2im in
1-d/2-d/3-d and the float16 <-> float32 conversions. Oclgrind's messages go to file descriptor 2; each case's are
captured and any message fails the case.

Launches are counted per .cl file (by wrapping pyopencl's Kernel.__call__) and printed as a table;
every cl/*.cl file that defines a kernel must have at least one checked launch, unless it cannot
run on this device (listed with the reason), so a new kernel file fails here until a case covers it.

Known Oclgrind limits: its --uninitialized plugin aborts on LLVM's `freeze` (left off); it has no
cl_khr_fp16 and aborts on half arithmetic (cl/fp16_probe.cl is not run); a process that used
CLBlast aborts at exit (CLBlast's program cache is torn down after the runtime), so the run ends
with os._exit once its report is flushed.

Exit status: 0 when every case is clean and right and every kernel file is covered, else 1.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
import zlib
from collections import Counter
from types import ModuleType
from typing import Any, Callable, Iterator

import numpy as np

__all__ = ["main", "CASES", "under_oclgrind", "oclgrind_messages"]

#: -cl-opt-disable: Oclgrind 21.10's interpreter lacks LLVM intrinsics that the optimiser introduces
#: (`if (i < 0) i = -i;`, reflect padding in cl/common.cl, becomes llvm.abs.i32: "Undefined external
#: function", the kernel cannot be created); unoptimised code also keeps every access the source makes.
OCLGRIND_OPTIONS = ("--data-races", "--check-api", "--build-options", "-cl-opt-disable")

#: How Oclgrind starts a diagnostic (invalid access, race, API error, fatal error, ...).
_DIAGNOSTIC = re.compile(r"^(Invalid |Uninitialized |Read-write data race|Write-write data race|"
                         r"Work-group divergence|Oclgrind |OCLGRIND|.*\bdata race\b|Kernel: )",
                         re.M)


def under_oclgrind() -> bool:
    """True when this process runs inside `oclgrind` (its runtime is preloaded)."""
    return "liboclgrind" in os.environ.get("LD_PRELOAD", "")


#: --check-api reports info queries that a 1.2 device answers with CL_INVALID_VALUE (pyopencl and
#: clconv ask for optional OpenCL 2.x/3.0 properties and handle the error): not a problem.
#: Nor is clCreateKernel of '_source': pyopencl's Kernel(program, name) reads program._source (the
#: text it keeps for capture_call); on a Program wrapper without it (kernel.program, as
#: clconv.runtime.program.BoundKernel passes) Program.__getattr__ tries it as a kernel name, and
#: pyopencl handles the failure.
_BENIGN_API = re.compile(r"Oclgrind - OpenCL runtime error detected\n\s*(Function: clGet\w*Info\n"
                         r"\s*Error:\s+CL_INVALID_VALUE\n\s*For argument 'param_name'|"
                         r"Function: clCreateKernel\n\s*Error:\s+CL_INVALID_KERNEL_NAME\n"
                         r"\s*Kernel '_source' not found)\n?")


def oclgrind_messages(text: str) -> list[str]:
    """The first line of each Oclgrind diagnostic in captured stderr text (benign info-query
    errors left out)."""
    text = _BENIGN_API.sub("", text)
    return [(m.group(0) + text[m.end():].split("\n", 1)[0]).strip()
            for m in _DIAGNOSTIC.finditer(text) if not m.group(0).startswith("Kernel")]


# ---------------------------------------------------------------------------
# the oracle (tests/reference.py of the source checkout)
# ---------------------------------------------------------------------------


def _load_tests_module(name: str) -> ModuleType:
    from ..runtime.program import kernel_dir

    tests = kernel_dir().parent / "tests"
    path = tests / f"{name}.py"
    if not path.is_file():
        raise SystemExit(f"clconv.tools.sanitize needs the source checkout's tests/{name}.py (the "
                         f"numpy oracle); not found at {path}")
    if str(tests) not in sys.path:
        sys.path.insert(0, str(tests))  # reference_extra imports reference
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------
# launch counting
# ---------------------------------------------------------------------------

_KERNEL_DEF = re.compile(r"__kernel\s+void\s+(\w+)\s*\(")


def kernel_files() -> dict[str, list[str]]:
    """Every cl/*.cl file and the kernels it defines (include-only files define none)."""
    from ..runtime.program import kernel_dir

    return {p.name: _KERNEL_DEF.findall(p.read_text()) for p in sorted(kernel_dir().glob("*.cl"))}


class LaunchCounter:
    """Counts kernel launches per .cl file while active (wraps pyopencl's Kernel.__call__ and
    clconv's BoundKernel, which enqueues its own kernel object directly)."""

    def __init__(self, files: dict[str, list[str]]) -> None:
        self.by_name: dict[str, list[str]] = {}
        for file, names in files.items():
            for name in names:
                self.by_name.setdefault(name, []).append(file)
        self.counts: Counter[str] = Counter()
        self._program_file: dict[int, str] = {}

    def _file(self, k: Any) -> str:
        name = k.function_name
        files = self.by_name.get(name, [])
        if len(files) == 1:
            return files[0]
        if not files:
            # pyopencl's own kernels (fill, copy, ...): not clconv's. (Their programs, wrapped
            # again by get_info, would look up `_source` as a kernel name: an API error.)
            return f"pyopencl ({name})"
        # A name in several files (or none): the program's source says which file it was built from.
        import pyopencl as cl

        prg = k.get_info(cl.kernel_info.PROGRAM)
        if prg.int_ptr not in self._program_file:
            source = prg.get_info(cl.program_info.SOURCE)
            from ..runtime.program import kernel_dir

            match = [f for f in files if (kernel_dir() / f).read_text().split("__kernel", 1)[-1]
                     .split("{", 1)[0] in source]
            self._program_file[prg.int_ptr] = match[0] if match else f"(unknown: {name})"
        return self._program_file[prg.int_ptr]

    def __enter__(self) -> LaunchCounter:
        import pyopencl as cl

        self._original = cl.Kernel.__call__
        counter, original = self, self._original

        def counted(k: Any, *args: Any, **kwargs: Any) -> Any:
            counter.counts[counter._file(k)] += 1
            return original(k, *args, **kwargs)

        cl.Kernel.__call__ = counted
        from ..blas import clblast

        self._gemm = clblast.gemm

        def counted_gemm(*args: Any, **kwargs: Any) -> Any:
            counter.counts["CLBlast (xgemm)"] += 1
            return self._gemm(*args, **kwargs)

        clblast.gemm = counted_gemm
        from ..runtime.program import BoundKernel

        self._bound = BoundKernel.__call__

        def counted_bound(bk: Any, *args: Any, **kwargs: Any) -> Any:
            if bk.shared is None:  # else it calls the shared kernel, counted above
                counter.counts[counter._file(bk.kernel)] += 1
            return self._bound(bk, *args, **kwargs)

        BoundKernel.__call__ = counted_bound  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        import pyopencl as cl

        from ..blas import clblast

        cl.Kernel.__call__ = self._original
        clblast.gemm = self._gemm
        from ..runtime.program import BoundKernel

        BoundKernel.__call__ = self._bound  # type: ignore[method-assign]


# ---------------------------------------------------------------------------
# cases
# ---------------------------------------------------------------------------

#: A check: (label, got, want, dtype, reduction, magnitude); reduction 0 means exact equality.
Check = tuple[str, Any, np.ndarray, Any, int, float]
Case = Callable[[Any, np.random.Generator], Iterator[Check]]
CASES: dict[str, Case] = {}


def case(fn: Case) -> Case:
    CASES[fn.__name__] = fn
    return fn


def _arr(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
    return rng.standard_normal(shape).astype(dtype)


def _smallest_limit(call: Callable[[int], Any], start: int = 16) -> tuple[int, Any]:
    """(limit, result) of `call(workspace_limit)` for the smallest power-of-two limit >= start that
    the planner accepts (it raises MemoryError below what one step needs): the workspace is split
    as finely as it can be (chunks of images, then ranges of output positions or rows of tiles)."""
    limit = start
    while True:
        try:
            return limit, call(limit)
        except MemoryError:
            if limit > 2**24:
                raise
            limit *= 2


def _mag(*arrays: Any) -> float:
    return max(math.prod(float(np.max(np.abs(a))) for a in arrays if a is not None), 1e-30)


_CONV_CASES = [
    # (x shape, w shape, kwargs): each runs with 'im2col' and 'direct'
    ((1, 2, 5, 6), (3, 2, 3, 3), {"padding": 1}),
    ((2, 3, 6, 5), (4, 3, 2, 3), {"stride": (2, 1), "padding": (1, 0), "dilation": (1, 2)}),
    ((1, 4, 5, 5), (4, 2, 3, 3), {"groups": 2, "padding": "same"}),
    ((2, 4, 5, 7), (4, 1, 3, 3), {"groups": 4, "padding": 1}),            # depthwise: conv_grouped
    ((1, 17, 4, 4), (2, 17, 3, 3), {"padding": 1}),                        # C_in/groups > 16: conv_direct
    ((2, 3, 4, 5), (5, 3, 1, 1), {}),                                      # pointwise: GEMM on the input
    ((1, 2, 5, 5), (2, 2, 3, 3), {"padding": 2, "padding_mode": "reflect"}),
    ((1, 2, 4, 5), (3, 2, 3, 2), {"padding": (2, 1), "padding_mode": "replicate"}),
    ((2, 2, 4, 4), (2, 2, 3, 3), {"padding": 3, "padding_mode": "circular"}),
    ((2, 9), (3, 2, 3, 3), {"padding": 1, "unbatched": (2, 3, 3)}),
]


@case
def conv2d_forward(dev: Any, rng: np.random.Generator) -> Iterator[Check]:
    """conv2d, 'im2col' (folded, chunked, ranges of positions), 'direct', 'implicit' and
    'im2col_packed' (clconv's packed GEMM: conv_implicit.cl, im2col_packed.cl), every padding mode,
    groups, depthwise, pointwise, bias + ReLU, float32 and float64."""
    import clconv

    for i, (xs, ws, kw) in enumerate(_CONV_CASES):
        kw = dict(kw)
        if "unbatched" in kw:
            xs = kw.pop("unbatched")
        dtypes = [np.float32] + ([np.float64] if dev.fp64 and i % 3 == 0 else [])
        for dt in dtypes:
            x, w, b = _arr(rng, xs, dt), _arr(rng, ws, dt), _arr(rng, (ws[0],), dt)
            want = ref.conv_nd(x, w, b, **kw)
            red = math.prod(ws[1:])
            for algorithm in ("im2col", "direct", "implicit", "im2col_packed"):
                got = clconv.conv2d(x, w, b, algorithm=algorithm, **kw)
                yield f"{algorithm} {xs} {ws} {kw} {np.dtype(dt).name}", got, want, dt, red, _mag(x, w)
            # a column buffer too small for one image: chunks of images, then ranges of positions
            limit, got = _smallest_limit(lambda n: clconv.conv2d(
                x, w, b, algorithm="im2col", workspace_limit=n, activation="relu", **kw))
            yield (f"im2col limit={limit} relu {xs} {ws}", got, np.maximum(want, 0), dt, red,
                   _mag(x, w))


@case
def conv1d_conv3d_forward(dev: Any, rng: np.random.Generator) -> Iterator[Check]:
    """conv1d and conv3d with both algorithms, strides, dilations, groups and padding modes."""
    import clconv

    cases = [
        (clconv.conv1d, (2, 3, 9), (4, 3, 3), {"stride": 2, "padding": 1, "dilation": 2}),
        # 'direct' only: Oclgrind 21.10 cannot create the 1-d reflect im2col kernel even at
        # -cl-opt-disable ("Undefined external function: llvm.abs.i32"); 2-d reflect im2col runs above
        (clconv.conv1d, (1, 4, 7), (4, 1, 3), {"groups": 4, "padding": 1,
                                               "padding_mode": "reflect", "only": "direct"}),
        (clconv.conv1d, (1, 4, 7), (4, 2, 3), {"groups": 2, "padding": 2,
                                               "padding_mode": "replicate"}),
        (clconv.conv3d, (1, 2, 4, 4, 5), (3, 2, 2, 3, 3), {"padding": (1, 0, 1)}),
        (clconv.conv3d, (2, 2, 3, 4, 4), (2, 1, 3, 3, 3), {"groups": 2, "padding": 1,
                                                           "padding_mode": "circular"}),
    ]
    for fn, xs, ws, kw in cases:
        kw = dict(kw)
        algorithms = ([kw.pop("only")] if "only" in kw else
                      ["im2col", "direct", "implicit", "im2col_packed"])
        x, w, b = _arr(rng, xs), _arr(rng, ws), _arr(rng, (ws[0],))
        want = ref.conv_nd(x, w, b, **kw)
        for algorithm in algorithms:
            got = fn(x, w, b, algorithm=algorithm, **kw)
            yield (f"{fn.__name__} {algorithm} {xs} {ws} {kw}", got, want, np.float32,
                   math.prod(ws[1:]), _mag(x, w))


@case
def winograd(dev: Any, rng: np.random.Generator) -> Iterator[Check]:
    """Winograd F(2x2, 3x3): odd sizes (edge tiles), groups, bias + ReLU, a workspace split into
    rows of tiles, float64."""
    import clconv

    cases = [((1, 2, 5, 7), (3, 2, 3, 3), {"padding": 1}, np.float32, False),
             ((2, 4, 6, 5), (4, 2, 3, 3), {"groups": 2}, np.float32, False),
             ((2, 2, 9, 9), (2, 2, 3, 3), {"padding": 1}, np.float32, True),
             ((1, 2, 4, 4), (2, 2, 3, 3), {"padding": 1}, np.float64, False)]
    for xs, ws, kw, dt, split in cases:
        if dt == np.float64 and not dev.fp64:
            continue
        x, w, b = _arr(rng, xs, dt), _arr(rng, ws, dt), _arr(rng, (ws[0],), dt)
        want = np.maximum(ref.conv_nd(x, w, b, **kw), 0)

        def run(n: int | None) -> Any:
            return clconv.conv2d(x, w, b, algorithm="winograd", activation="relu",
                                 workspace_limit=n, **kw)

        limit, got = _smallest_limit(run) if split else (None, run(None))
        # Winograd's transforms add rounding: the tests' reduction for it is 4x the direct one
        yield (f"winograd {xs} {ws} {kw} limit={limit} {np.dtype(dt).name}", got, want, dt,
               4 * math.prod(ws[1:]), _mag(x, w))


#: Fused epilogue activations with their numpy float64 formulas (torch's).
_EPILOGUE_ACTS: list[tuple[Any, Callable[[np.ndarray], np.ndarray]]] = [
    (("leaky_relu", 0.2), lambda v: np.where(v > 0, v, 0.2 * v)),
    ("relu6", lambda v: np.clip(v, 0, 6)),
    ("sigmoid", lambda v: 1 / (1 + np.exp(-v))),
    (("clamp", -0.5, 0.5), lambda v: np.clip(v, -0.5, 0.5)),
]


@case
def epilogues(dev: Any, rng: np.random.Generator) -> Iterator[Check]:
    """The fused epilogue (common.cl's epilogue_residual, gemm_packed.cl's vector store): act(conv
    + bias + residual) through every algorithm (GEMM edge and full tiles, conv_grouped.cl's vector
    interior, conv_direct.cl, the im2col epilogue kernels, Winograd) and a transposed
    convolution."""
    import clconv
    from ..blas import clblast

    cases = [((2, 3, 4, 19), (7, 3, 3, 3), {"padding": 1}, ["direct", "implicit", "im2col_packed"]
              + (["im2col", "winograd"] if clblast.available() else [])),
             ((1, 4, 3, 21), (4, 1, 3, 3), {"padding": 1, "groups": 4}, ["direct"]),
             ((1, 17, 3, 4), (2, 17, 3, 3), {"padding": 1}, ["direct"])]
    k = 0
    for xs, ws, kw, algorithms in cases:
        x, w, b = _arr(rng, xs), _arr(rng, ws), _arr(rng, (ws[0],))
        conv = ref.conv_nd(x, w, b, **kw)
        r = _arr(rng, conv.shape)
        for algorithm in algorithms:
            act, formula = _EPILOGUE_ACTS[k % len(_EPILOGUE_ACTS)]
            k += 1
            got = clconv.conv2d(x, w, b, algorithm=algorithm, activation=act, residual=r, **kw)
            red = math.prod(ws[1:]) * (4 if algorithm == "winograd" else 1)
            yield (f"epilogue {algorithm} {xs} {ws} {act}", got, formula(conv + r), np.float32,
                   red, max(_mag(x, w), _mag(r)))
    x, w, b = _arr(rng, (1, 4, 3, 4)), _arr(rng, (4, 3, 3, 2)), _arr(rng, (6,))
    kw = {"stride": (2, 1), "groups": 2}
    conv = ref.conv_transpose_nd(x, w, b, **kw)
    r = _arr(rng, conv.shape)
    got = clconv.conv_transpose2d(x, w, b, activation="relu6", residual=r, **kw)
    yield ("epilogue conv_transpose2d relu6", got, np.clip(conv + r, 0, 6), np.float32, 2 * 6,
           max(_mag(x, w), _mag(r)))


@case
def transposed(dev: Any, rng: np.random.Generator) -> Iterator[Check]:
    """conv_transpose1d/2d/3d: strides, output_padding, groups, dilation, bias (col2im + GEMM)."""
    import clconv

    cases = [
        (clconv.conv_transpose1d, (2, 3, 5), (3, 2, 3), {"stride": 2, "padding": 1,
                                                        "output_padding": 1}),
        (clconv.conv_transpose2d, (1, 4, 3, 4), (4, 3, 3, 2), {"stride": (2, 1), "groups": 2,
                                                               "dilation": (1, 2)}),
        (clconv.conv_transpose2d, (2, 2, 3, 3), (2, 3, 3, 3), {"stride": 2, "padding": 1,
                                                               "output_padding": 1}),
        (clconv.conv_transpose3d, (1, 2, 2, 3, 2), (2, 2, 2, 2, 3), {"stride": 2}),
    ]
    for fn, xs, ws, kw in cases:
        x, w, b = _arr(rng, xs), _arr(rng, ws), _arr(rng, (ws[1] * kw.get("groups", 1),))
        want = ref.conv_transpose_nd(x, w, b, **kw)
        got = fn(x, w, b, **kw)
        red = ws[0] // kw.get("groups", 1) * math.prod(ws[2:])
        yield f"{fn.__name__} {xs} {ws} {kw}", got, want, np.float32, red, _mag(x, w)


@case
def gradients(dev: Any, rng: np.random.Generator) -> Iterator[Check]:
    """conv{1,2,3}d_input and _weight: padding modes (pad_adjoint), groups, strides, dilation,
    float64, a weight gradient whose columns are split by a small workspace."""
    import clconv

    cases = [
        (2, (2, 4, 5, 6), (6, 2, 3, 3), {"stride": 2, "padding": 1, "groups": 2}, np.float32),
        (2, (1, 2, 5, 5), (3, 2, 3, 3), {"padding": 2, "padding_mode": "reflect"}, np.float32),
        (2, (1, 2, 4, 5), (2, 2, 2, 3), {"padding": 1, "padding_mode": "replicate",
                                         "dilation": (2, 1)}, np.float32),
        (2, (2, 2, 4, 4), (2, 2, 3, 3), {"padding": 2, "padding_mode": "circular"}, np.float64),
        (1, (2, 3, 8), (3, 3, 3), {"stride": 2, "padding": 1, "padding_mode": "reflect"},
         np.float32),
        (3, (1, 2, 3, 4, 4), (2, 1, 2, 3, 3), {"groups": 2, "padding": 1,
                                               "padding_mode": "replicate"}, np.float32),
    ]
    for nd, xs, ws, kw, dt in cases:
        if dt == np.float64 and not dev.fp64:
            continue
        x, w = _arr(rng, xs, dt), _arr(rng, ws, dt)
        g = _arr(rng, ref.conv_nd(x, w, **kw).shape, dt)
        fn_in = getattr(clconv, f"conv{nd}d_input")
        fn_w = getattr(clconv, f"conv{nd}d_weight")
        groups = kw.get("groups", 1)
        want_in = ref_extra.conv_nd_input(xs, w, g, **kw)
        yield (f"conv{nd}d_input {xs} {ws} {kw} {np.dtype(dt).name}", fn_in(xs, w, g, **kw),
               want_in, dt, ws[0] // groups * math.prod(ws[2:]), _mag(w, g))
        want_w = ref_extra.conv_nd_weight(x, ws, g, **kw)
        red = xs[0] * math.prod(g.shape[2:])
        yield (f"conv{nd}d_weight {xs} {ws} {kw} {np.dtype(dt).name}", fn_w(x, ws, g, **kw),
               want_w, dt, red, _mag(x, g))
        limit, got = _smallest_limit(lambda n: fn_w(x, ws, g, workspace_limit=n, **kw))
        yield f"conv{nd}d_weight limit={limit} {xs} {ws}", got, want_w, dt, red, _mag(x, g)


@case
def unfold_fold(dev: Any, rng: np.random.Generator) -> Iterator[Check]:
    """im2col / col2im in 1-d, 2-d and 3-d: padding, stride, dilation, unbatched."""
    import clconv

    cases = [
        (clconv.im2col1d, clconv.col2im1d, (2, 3, 9), (3,), {"padding": 1, "stride": 2,
                                                             "dilation": 2}),
        (clconv.im2col, clconv.col2im, (2, 2, 5, 6), (3, 2), {"padding": (1, 0),
                                                              "stride": (1, 2)}),
        (clconv.im2col, clconv.col2im, (3, 4, 4), (2, 2), {"dilation": 2, "padding": 1}),
        (clconv.im2col3d, clconv.col2im3d, (1, 2, 3, 4, 3), (2, 2, 2), {"padding": 1,
                                                                        "stride": (1, 2, 1)}),
    ]
    for unfold, fold, xs, k, kw in cases:
        x = _arr(rng, xs)
        cols = ref.unfold(x, k, **kw)
        yield f"{unfold.__name__} {xs} {k} {kw}", unfold(x, k, **kw), cols, np.float32, 0, 1.0
        c = _arr(rng, cols.shape)
        nsp = len(k)
        want = ref.fold(c, xs[-nsp:], k, **kw)
        yield (f"{fold.__name__} {cols.shape} {k} {kw}", fold(c, xs[-nsp:], k, **kw), want,
               np.float32, math.prod(k), _mag(c))


@case
def layouts_and_conversions(dev: Any, rng: np.random.Generator) -> Iterator[Check]:
    """Strided device operands (cl/strided_copy.cl) and float16 <-> float32 <-> float64 storage
    conversions (cl/convert.cl: vload_half/vstore_half are core OpenCL, no cl_khr_fp16 needed)."""
    import pyopencl.array as cla

    import clconv
    from ..ops.precision import convert

    x = _arr(rng, (2, 3, 6, 10))
    w = _arr(rng, (2, 3, 3, 3))
    xd = cla.to_device(dev.queue, x)[:, :, 1:, ::2]  # offset and strides: copied on the device
    want = ref.conv_nd(x[:, :, 1:, ::2], w, padding=1)
    for algorithm in ("im2col", "direct"):
        got = clconv.conv2d(xd, w, padding=1, algorithm=algorithm)
        yield f"strided input {algorithm}", got, want, np.float32, 27, _mag(x, w)
    a = _arr(rng, (37,))
    pairs = [(np.float32, np.float16), (np.float16, np.float32)]
    if dev.fp64:
        pairs += [(np.float32, np.float64), (np.float64, np.float32), (np.float64, np.float16)]
    for src, dst in pairs:
        host = a.astype(src)
        got = convert(dev, cla.to_device(dev.queue, host), np.dtype(dst))
        yield f"convert {np.dtype(src).name} -> {np.dtype(dst).name}", got, host.astype(dst), dst, 0, 1.0


@case
def packed_gemm(dev: Any, rng: np.random.Generator) -> Iterator[Check]:
    """clconv's packed GEMM (cl/gemm_packed.cl) directly: edge tiles (M, N, K not multiples of the
    tile), batches, transposes, a reused packed A, alpha/beta, float32 and float64."""
    import pyopencl.array as cla

    from ..blas import packed

    shapes = [(7, 19, 5, 1, False, False), (13, 33, 9, 2, True, False),
              (4, 25, 3, 3, False, True), (1, 1, 1, 1, False, False)]
    dtypes = [np.float32] + ([np.float64] if dev.fp64 else [])
    for dt in dtypes:
        for m, n, k, batch, at, bt in shapes:
            a = _arr(rng, (batch, k, m) if at else (batch, m, k), dt)
            b = _arr(rng, (batch, n, k) if bt else (batch, k, n), dt)
            c0 = _arr(rng, (batch, m, n), dt)
            opa = np.swapaxes(a, 1, 2) if at else a
            opb = np.swapaxes(b, 1, 2) if bt else b
            want = 0.5 * np.matmul(opa.astype(np.float64), opb) + 2.0 * c0
            ad, bd, cd = (cla.to_device(dev.queue, v) for v in (a, b, c0))
            with dev.lock:
                packed.gemm(dev, m, n, k, ad, 0, m * k, bd, 0, n * k, cd, 0, m * n, batch,
                            a_transposed=at, b_transposed=bt, alpha=0.5, beta=2.0)
            yield (f"gemm_packed m={m} n={n} k={k} batch={batch} at={at} bt={bt} "
                   f"{np.dtype(dt).name}", cd, want, dt, k, _mag(a, b, c0) * 2)


@case
def peak_kernels(dev: Any, rng: np.random.Generator) -> Iterator[Check]:
    """cl/peak.cl (the bench's peak measurements) on a few work-items: the fma chains against
    numpy's, and the copy."""
    import pyopencl.array as cla

    from ..runtime.program import kernel, precision_defines

    vec, iters, items = 4, 3, 5
    defines = precision_defines(np.dtype(np.float32))
    defines.update(VEC=vec, ITERS=iters)
    out = cla.empty(dev.queue, (items,), np.float32)
    seed = np.float32(0.5)
    with dev.lock:
        kernel(dev, "peak.cl", "fma_peak", defines)(dev.queue, (items,), None, out.data, seed)
    a = np.arange(items, dtype=np.float64)[:, None] + np.arange(12)
    for _ in range(iters):
        a = a * 0.5 + 0.5
    yield "peak fma_peak", out, a.sum(axis=1) * vec, np.float32, 12 * vec, 12.0
    src = cla.to_device(dev.queue, _arr(rng, (items * vec,)))
    dst = cla.empty(dev.queue, (items * vec,), np.float32)
    with dev.lock:
        kernel(dev, "peak.cl", "copy_peak", {"VEC": vec})(dev.queue, (items,), None, src.data,
                                                          dst.data)
    yield "peak copy_peak", dst, src.get().astype(np.float64), np.float32, 1, 1.0


def _adjoint(label: str, x: np.ndarray, y: np.ndarray, g: np.ndarray, dx: Any) -> Check:
    """A gradient kernel checked as the adjoint of its (locally linear) forward: <x, dx> = <y, g>."""
    got = np.array([float((x.astype(np.float64) * _host(dx).astype(np.float64)).sum())])
    want = np.array([float((y.astype(np.float64) * g.astype(np.float64)).sum())])
    return label, got, want, np.float32, x.size, _mag(x, g) + 1


def _host(a: Any) -> np.ndarray:
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


@case
def pooling(dev: Any, rng: np.random.Generator) -> Iterator[Check]:
    """cl/pool.cl: max (dilation, ceil_mode, NaN), avg (count_include_pad, divisor_override) and
    adaptive pooling in 1-3 d, and every gradient kernel (through clconv.nn's pooling layers)."""
    import clconv

    nn = clconv.nn
    x2 = _arr(rng, (2, 2, 5, 6))
    x2[0, 1, 2, 2] = np.nan
    yield ("max_pool2d k3 s2 p1 ceil dilation", clconv.max_pool2d(x2, 3, 2, 1, 2, True),
           ref_layers.max_pool(x2.astype(np.float64), 3, 2, 1, 2, True), np.float32, 0, 1.0)
    x1, x3 = _arr(rng, (1, 2, 7)), _arr(rng, (1, 2, 3, 4, 5))
    yield ("max_pool1d", clconv.max_pool1d(x1, 2, 1, 1),
           ref_layers.max_pool(x1.astype(np.float64), 2, 1, 1), np.float32, 0, 1.0)
    yield ("avg_pool3d ceil count_include_pad=False", clconv.avg_pool3d(x3, 2, 2, 1, True, False),
           ref_layers.avg_pool(x3.astype(np.float64), 2, 2, 1, True, False), np.float32, 8,
           _mag(x3))
    x2 = _arr(rng, (2, 2, 5, 6))
    yield ("avg_pool2d divisor_override", clconv.avg_pool2d(x2, 3, 2, 1, divisor_override=4),
           ref_layers.avg_pool(x2.astype(np.float64), 3, 2, 1, divisor_override=4), np.float32,
           9, _mag(x2))
    yield ("adaptive_avg_pool2d", clconv.adaptive_avg_pool2d(x2, (2, None)),
           ref_layers.adaptive_pool(x2.astype(np.float64), (2, None)), np.float32, 30, _mag(x2))
    yield ("adaptive_max_pool2d", clconv.adaptive_max_pool2d(x2, (3, 4)),
           ref_layers.adaptive_pool(x2.astype(np.float64), (3, 4), ref_layers.adaptive_max),
           np.float32, 0, 1.0)
    for layer in (nn.MaxPool2d(3, 2, 1, ceil_mode=True), nn.AvgPool2d(3, 2, 1, ceil_mode=True),
                  nn.AdaptiveAvgPool2d((2, 4)), nn.AdaptiveMaxPool2d((3, 2)),
                  nn.MaxPool3d(2, 1)):
        x = x3 if isinstance(layer, nn.MaxPool3d) else x2
        y = layer(x)
        g = _arr(rng, y.shape)
        yield _adjoint(f"{layer!r} backward", x, y, g, layer.backward(g))


@case
def elementwise(dev: Any, rng: np.random.Generator) -> Iterator[Check]:
    """cl/elementwise.cl: activations and their gradients, broadcast add/mul, bias + residual +
    activation after a GEMM (linear), batch norm (inference, training statistics and gradients)
    and the row copies of cat."""
    import clconv

    nn = clconv.nn
    x = _arr(rng, (2, 3, 4))
    x[0, 0, 0] = np.nan
    xd = x.astype(np.float64)
    for name in ("relu", "silu", "gelu", "hardswish"):
        yield name, getattr(clconv, name)(x), ref_layers.ACTIVATIONS[name](xd), np.float32, 1, 4.0
    relu = nn.ReLU()
    relu(x)
    g = _arr(rng, x.shape)
    yield "relu backward", relu.backward(g), np.where(xd <= 0, 0.0, g), np.float32, 0, 1.0
    gate = _arr(rng, (2, 3, 1))
    yield ("mul channel gate", clconv.mul(x, gate), xd * gate, np.float32, 1, 30.0)  # x has NaN
    yield ("add + relu", clconv.add(x, gate, activation="relu"),
           ref_layers.ACTIVATIONS["relu"](xd + gate), np.float32, 1, 10.0)
    a, w, b, r = _arr(rng, (5, 7)), _arr(rng, (3, 7)), _arr(rng, (3,)), _arr(rng, (5, 3))
    want = a.astype(np.float64) @ w.T + b + r
    yield ("linear + bias + residual + relu", clconv.linear(a, w, b, activation="relu",
                                                            residual=r),
           np.maximum(want, 0), np.float32, 7, _mag(a, w) + _mag(b) + _mag(r))
    fc = nn.Linear(7, 3, activation="relu", rng=0)  # relu fused; its gradient from the output
    y = fc(a)
    gg = _arr(rng, y.shape)
    fc.backward(gg)
    yield ("Linear + relu bias gradient", fc.bias_grad, np.where(y <= 0, 0.0, gg).sum(0),
           np.float32, 5, _mag(gg))
    xb = _arr(rng, (3, 2, 2, 3))
    mean, var, wt, bs = _arr(rng, (2,)), np.abs(_arr(rng, (2,))) + 0.5, _arr(rng, (2,)), \
        _arr(rng, (2,))
    yield ("batch_norm inference", clconv.batch_norm(xb, mean, var, wt, bs),
           ref_layers.batch_norm(xb.astype(np.float64), mean, var, wt, bs), np.float32, 4, 10.0)
    bn = nn.BatchNorm2d(2)
    y = bn(xb)
    xx = xb.astype(np.float64)
    mu, sd = xx.mean(axis=(0, 2, 3)), xx.var(axis=(0, 2, 3))
    yield "BatchNorm2d training", y, ref_layers.batch_norm(xx, mu, sd), np.float32, 18, 10.0
    g = _arr(rng, xb.shape)
    gd = g.astype(np.float64)
    xhat = (xx - mu[None, :, None, None]) / np.sqrt(sd + 1e-5)[None, :, None, None]
    m = xx.size // 2
    want = (gd - gd.mean(axis=(0, 2, 3), keepdims=True)
            - xhat * (gd * xhat).sum(axis=(0, 2, 3), keepdims=True) / m) \
        / np.sqrt(sd + 1e-5)[None, :, None, None]
    yield "BatchNorm2d training backward", bn.backward(g), want, np.float32, 18, 30.0
    yield ("BatchNorm2d running_mean", bn.running_mean, 0.1 * mu, np.float32, 18, 1.0)
    parts = [_arr(rng, (2, c, 3)) for c in (1, 3, 2)]
    yield "cat dim=1", clconv.cat(parts, 1), np.concatenate(parts, 1), np.float32, 0, 1.0


@case
def depthwise_pointwise_splitk(dev: Any, rng: np.random.Generator) -> Iterator[Check]:
    """algorithm='depthwise' (cl/conv_depthwise.cl: conv_depthwise_small's whole zero-padded
    planes, stride 1 and 2, and conv_depthwise for other padding modes, 1-d and 3-d, channel
    multipliers), 'pointwise' (cl/conv_pointwise.cl, with the strided layer's subsample) and
    'splitk' (im2col + cl/gemm_splitk.cl's slices and reduction), epilogues fused, float64."""
    import clconv

    f64 = [np.float64] if dev.fp64 else []
    cases = [
        (clconv.conv2d, (2, 3, 5, 7), (3, 1, 3, 3), {"padding": 1, "groups": 3}, "depthwise",
         [np.float32] + f64),
        (clconv.conv2d, (1, 2, 7, 9), (4, 1, 3, 3), {"stride": 2, "padding": 1, "groups": 2},
         "depthwise", [np.float32]),
        (clconv.conv2d, (1, 3, 5, 6), (3, 1, 3, 3), {"padding": 1, "groups": 3,
                                                     "padding_mode": "reflect"}, "depthwise",
         [np.float32]),
        (clconv.conv1d, (2, 2, 11), (2, 1, 5), {"padding": 2, "groups": 2, "dilation": 2},
         "depthwise", [np.float32]),
        (clconv.conv3d, (1, 2, 3, 4, 5), (2, 1, 2, 3, 3), {"padding": (0, 1, 1), "groups": 2},
         "depthwise", [np.float32]),
        # 'pointwise' and 'splitk' need a register tile's width of output positions (<= 64)
        (clconv.conv2d, (2, 3, 8, 9), (4, 3, 1, 1), {}, "pointwise", [np.float32] + f64),
        (clconv.conv2d, (1, 3, 16, 17), (4, 3, 1, 1), {"stride": 2}, "pointwise", [np.float32]),
        (clconv.conv2d, (1, 5, 8, 9), (3, 5, 3, 3), {"padding": 1}, "splitk",
         [np.float32] + f64),
    ]
    for i, (fn, xs, ws, kw, algorithm, dtypes) in enumerate(cases):
        for dt in dtypes:
            x, w, b = _arr(rng, xs, dt), _arr(rng, ws, dt), _arr(rng, (ws[0],), dt)
            conv = ref.conv_nd(x, w, b, **kw)
            red = math.prod(ws[1:])
            if i % 2:  # bias + residual + ReLU fused
                r = _arr(rng, conv.shape, dt)
                got = fn(x, w, b, algorithm=algorithm, activation="relu", residual=r, **kw)
                want, mag = np.maximum(conv + r, 0), max(_mag(x, w), _mag(r))
            else:
                got, want, mag = fn(x, w, b, algorithm=algorithm, **kw), conv, _mag(x, w)
            yield (f"{fn.__name__} {algorithm} {xs} {ws} {kw} {np.dtype(dt).name}", got, want,
                   dt, red, mag)


class _GemmEngine:
    """$CLCONV_GEMM set to `engine` while active (plans made meanwhile keep that engine: the cases
    using it choose shapes of their own, so that no other case reuses those plans)."""

    def __init__(self, engine: str) -> None:
        self.engine = engine

    def __enter__(self) -> None:
        self.saved = os.environ.get("CLCONV_GEMM")
        os.environ["CLCONV_GEMM"] = self.engine

    def __exit__(self, *exc: object) -> None:
        if self.saved is None:
            os.environ.pop("CLCONV_GEMM", None)
        else:
            os.environ["CLCONV_GEMM"] = self.saved


@case
def grad_paths(dev: Any, rng: np.random.Generator) -> Iterator[Check]:
    """cl/conv_grad_paths.cl (clconv.ops.grad_paths): the stride-1 adjoint as a forward
    convolution of the flipped filters (flip_transpose), the strided depthwise adjoint
    (dw_adjoint), the depthwise weight gradient (dw_weight_grad), the whole-image col2im of the
    GEMM adjoint (col2im_phase) and the dense weight gradient on clconv's packed GEMM (wg_pack_g,
    wg_pack_x), float64 on one of each."""
    import clconv

    cases = [
        # (x shape, w shape, kwargs, float64 too)
        ((2, 3, 5, 6), (3, 1, 3, 3), {"padding": 1, "groups": 3}, True),         # flip + forward
        ((1, 4, 6, 5), (2, 4, 1, 1), {}, False),                                  # 1x1: flip
        ((2, 2, 7, 9), (4, 1, 3, 3), {"stride": 2, "padding": 1, "groups": 2}, True),  # dw
        ((1, 3, 6, 9), (3, 1, 3, 2), {"stride": (1, 2), "padding": (1, 0), "groups": 3,
                                      "dilation": (2, 1)}, False),                # dw
        ((2, 3, 7, 6), (4, 3, 3, 3), {"stride": 2, "padding": 1}, True),          # phase col2im
        ((1, 2, 8, 7), (3, 2, 3, 2), {"stride": (3, 2), "dilation": (1, 2)}, False),
        ((2, 3, 5, 9), (2, 3, 3, 3), {"padding": (1, 2)}, False),                 # packed wgrad
        ((2, 2, 11), (3, 2, 3), {"stride": 2, "padding": 1, "nd": 1}, False),     # 1-d
    ]
    with _GemmEngine("packed"):  # PackedWeightGrad runs on clconv's packed GEMM only
        for xs, ws, kw, wide in cases:
            kw = dict(kw)
            nd = kw.pop("nd", 2)
            for dt in [np.float32] + ([np.float64] if wide and dev.fp64 else []):
                x, w = _arr(rng, xs, dt), _arr(rng, ws, dt)
                g = _arr(rng, ref.conv_nd(x, w, **kw).shape, dt)
                groups = kw.get("groups", 1)
                name = f"{xs} {ws} {kw} {np.dtype(dt).name}"
                yield (f"conv{nd}d_input {name}",
                       getattr(clconv, f"conv{nd}d_input")(xs, w, g, **kw),
                       ref_extra.conv_nd_input(xs, w, g, **kw), dt,
                       ws[0] // groups * math.prod(ws[2:]), _mag(w, g))
                yield (f"conv{nd}d_weight {name}",
                       getattr(clconv, f"conv{nd}d_weight")(x, ws, g, **kw),
                       ref_extra.conv_nd_weight(x, ws, g, **kw), dt,
                       xs[0] * math.prod(g.shape[2:]), _mag(x, g))
        # the adjoint as a layer: conv_transpose2d's bias + ReLU through the forward machinery
        x, w, b = _arr(rng, (1, 2, 4, 5)), _arr(rng, (2, 3, 3, 3)), _arr(rng, (3,))
        want = np.maximum(ref.conv_transpose_nd(x, w, b, padding=1), 0)
        yield ("conv_transpose2d stride 1 relu", clconv.conv_transpose2d(
            x, w, b, padding=1, activation="relu"), want, np.float32, 2 * 9, _mag(x, w))


@case
def channel_norm(dev: Any, rng: np.random.Generator) -> Iterator[Check]:
    """cl/channel_norm.cl (clconv.torch's channels-first LayerNorm): with and without the affine
    weight and bias, an odd number of positions, float64."""
    import pyopencl.array as cla

    from ..torch_graph import channel_norm as norm

    for shape, affine, dt in [((2, 5, 3, 4), True, np.float32), ((1, 3, 7), False, np.float32),
                              ((2, 4, 3, 3), True, np.float64)]:
        if dt == np.float64 and not dev.fp64:
            continue
        x = _arr(rng, shape, dt)
        x[0, :, 0] += 100  # a large mean: the centred second pass
        c = shape[1]
        w, b = (_arr(rng, (c,), dt), _arr(rng, (c,), dt)) if affine else (None, None)
        xx = x.astype(np.float64)
        want = (xx - xx.mean(axis=1, keepdims=True)) / np.sqrt(xx.var(axis=1, keepdims=True)
                                                               + 1e-6)
        bshape = (1, c) + (1,) * (len(shape) - 2)
        if affine:
            want = want * w.reshape(bshape) + b.reshape(bshape)
        got = norm(cla.to_device(dev.queue, x),
                   cla.to_device(dev.queue, w) if affine else None,
                   cla.to_device(dev.queue, b) if affine else None, 1e-6)
        # (x - mean) rounds at |x|'s scale (100): that over a standard deviation of ~1
        mag = _mag(x) * (_mag(w) if affine else 1.0) + (_mag(b) if affine else 0.0)
        yield (f"channel_norm {shape} affine={affine} {np.dtype(dt).name}", got, want, dt, 2 * c,
               mag)


def _index_long(case_fn: Case) -> Case:
    def run(dev: Any, rng: np.random.Generator) -> Iterator[Check]:
        from ..runtime import transfer

        saved = transfer.FORCE_INDEX_T
        transfer.FORCE_INDEX_T = "long"
        try:
            for label, *rest in case_fn(dev, rng):
                yield (f"INDEX_T=long {label}", *rest)
        finally:
            transfer.FORCE_INDEX_T = saved

    run.__name__ = f"{case_fn.__name__}_index_long"
    return run


# The 64-bit index path of every kernel that has one (INDEX_T), on a subset of the cases.
for _fn in (conv2d_forward, winograd, gradients, unfold_fold, layouts_and_conversions):
    case(_index_long(_fn))
case(_index_long(pooling))
case(_index_long(elementwise))
case(_index_long(depthwise_pointwise_splitk))
case(_index_long(grad_paths))


#: Files that cannot run on a device, and why (checked at run time).
def not_applicable(dev: Any) -> dict[str, str]:
    reasons = {}
    if not dev.fp16:
        reasons["fp16_probe.cl"] = ("the device has no cl_khr_fp16 (Oclgrind 21.10 aborts on half "
                                    "arithmetic); the probe runs only where float16 is offered")
    return reasons


# ---------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------


class _Stderr:
    """Captures file descriptor 2 (where Oclgrind writes its diagnostics) while active."""

    def __enter__(self) -> _Stderr:
        sys.stderr.flush()
        self._file = tempfile.TemporaryFile()
        self._saved = os.dup(2)
        os.dup2(self._file.fileno(), 2)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._file.seek(0)
        self.text = self._file.read().decode("utf-8", "replace")
        self._file.close()


def _compare(check: Check) -> str | None:
    label, got, want, dtype, reduction, magnitude = check
    from tolerance import assert_close, assert_exact  # tests/tolerance.py, loaded by main

    try:
        if reduction == 0:
            assert_exact(got, want)
        else:
            assert_close(got, want, dtype, reduction=reduction, magnitude=magnitude)
    except AssertionError as err:
        return f"wrong result: {' '.join(str(err).split())[:300]}"
    return None


def run_cases(dev: Any, names: list[str], verbose: bool) -> tuple[list[str], int]:
    """Runs the named cases; returns (failures, checks)."""
    failures: list[str] = []
    checks = 0
    for name in names:
        rng = np.random.default_rng(zlib.crc32(name.encode()))  # the same data on every run
        t0 = time.perf_counter()
        results: list[tuple[str, str | None]] = []
        with _Stderr() as err:
            try:
                for check in CASES[name](dev, rng):
                    dev.queue.finish()
                    results.append((check[0], _compare(check)))
            except Exception:  # noqa: BLE001 - reported as the case's failure
                results.append(("(exception)", traceback.format_exc(limit=6)))
            dev.queue.finish()
        messages = oclgrind_messages(err.text)
        checks += len(results)
        bad = [f"{name}: {label}: {why}" for label, why in results if why]
        if messages:
            bad.append(f"{name}: Oclgrind reported {len(messages)} problem(s), first: "
                       f"{messages[0]}\n{_BENIGN_API.sub('', err.text).strip()[:4000]}")
        elif err.text.strip() and verbose:
            print(err.text.rstrip())
        failures += bad
        state = "FAIL" if bad else "ok"
        print(f"  {state:4} {name:36} {len(results):3} checks  {time.perf_counter() - t0:6.1f} s",
              flush=True)
        if verbose:
            for label, why in results:
                print(f"         {'FAIL' if why else 'ok'}: {label}" + (f": {why}" if why else ""))
    return failures, checks


def _table(files: dict[str, list[str]], counts: Counter[str], na: dict[str, str]) -> list[str]:
    """Prints the launches per file; returns the kernel files with none (and no reason)."""
    print("\nlaunches checked per kernel file:")
    uncovered = []
    for file, names in files.items():
        n = counts.get(file, 0)
        if not names:
            note = "include-only (no __kernel): checked through the files that include it"
        elif n:
            note = f"kernels: {', '.join(names)}"
        elif file in na:
            note = f"not run: {na[file]}"
        else:
            note = "NOT COVERED: add a case to clconv/tools/sanitize.py"
            uncovered.append(file)
        print(f"  {file:22} {n:5}  {note}")
    for other in sorted(set(counts) - set(files)):
        print(f"  {other:22} {counts[other]:5}  (CLBlast's own kernels, checked by Oclgrind too)"
              if other.startswith("CLBlast") else f"  {other:22} {counts[other]:5}")
    return uncovered


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clconv.tools.sanitize", description=__doc__
                                     .split("\n\n", 1)[0])
    parser.add_argument("cases", nargs="*", help=f"cases to run (default all): {', '.join(CASES)}")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every check")
    args = parser.parse_args(argv)
    if not under_oclgrind():
        exe = shutil.which("oclgrind")
        if exe is None:
            print("clconv.tools.sanitize needs Oclgrind: `sudo apt-get install -y oclgrind` (or "
                  "`make sanitize`, which installs it)", file=sys.stderr)
            return 2
        sys.stdout.flush()
        os.execv(exe, [exe, *OCLGRIND_OPTIONS, sys.executable, "-m", "clconv.tools.sanitize",
                       *(argv if argv is not None else sys.argv[1:])])
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; known: {', '.join(CASES)}")
    global ref, ref_extra, ref_layers
    ref = _load_tests_module("reference")
    ref_extra = _load_tests_module("reference_extra")
    ref_layers = _load_tests_module("reference_layers")
    _load_tests_module("tolerance")

    import clconv

    os.environ.setdefault("CLCONV_AUTO", "rule")
    dev = clconv.device("oclgrind")
    files = kernel_files()
    print(f"clconv sanitize: {dev.name} [{dev.platform_name}], Oclgrind options "
          f"{' '.join(OCLGRIND_OPTIONS)}; kernel files: {', '.join(files)}", flush=True)
    t0 = time.perf_counter()
    with dev, LaunchCounter(files) as counter:
        failures, checks = run_cases(dev, args.cases or list(CASES), args.verbose)
    uncovered = _table(files, counter.counts, not_applicable(dev)) if not args.cases else []
    print(f"\n{checks} checks, {sum(counter.counts.values())} launches in "
          f"{time.perf_counter() - t0:.0f} s")
    for f in failures:
        print(f"FAIL {f}")
    for f in uncovered:
        print(f"FAIL {f}: defines kernels but no case launched one")
    ok = not failures and not uncovered
    print("sanitize: " + ("clean" if ok else "FAILED"), flush=True)
    sys.stderr.flush()
    # CLBlast's static program cache is torn down after the OpenCL runtime under Oclgrind and
    # aborts the process at exit: leave without running the exit handlers.
    os._exit(0 if ok else 1)


ref: ModuleType
ref_extra: ModuleType
ref_layers: ModuleType

if __name__ == "__main__":
    sys.exit(main())
