#!/bin/sh
# Runs a command as on the AVX2 machine class (Zen 3: PoCL's target 'haswell') on an AVX-512 host,
# both sides limited to AVX2:
#   PoCL compiles for haswell with its AVX2 kernel library (POCL_LLVM_CPU_NAME, POCL_KERNELLIB_NAME;
#   its cache keeps the two targets apart: the device is named pthread-haswell-...), and reports
#   AVX2's vector widths (avx2_site/sitecustomize.py), so clconv chooses AVX2's tiles;
#   torch runs its AVX2 kernels (ATEN_CPU_CAPABILITY) and oneDNN's (ONEDNN_MAX_CPU_ISA).
# The instruction set is AVX2's; the cores are still the host's (e.g. Zen 5's caches and its two
# 512-bit FMA pipes, which AVX2 code uses as 256-bit ones), so ratios, not times, carry over.
# Example: benchmarks/emulate_avx2.sh .venv/bin/python -m clconv bench --layers resnet18
here=$(cd "$(dirname "$0")" && pwd)
export PYTHONPATH="$here/avx2_site${PYTHONPATH:+:$PYTHONPATH}"
export POCL_LLVM_CPU_NAME=haswell POCL_KERNELLIB_NAME=avx2
export ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
exec "$@"
