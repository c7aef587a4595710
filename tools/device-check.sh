#!/usr/bin/env bash
# The prepared GPU check: clconv's test suite and a short `python -m clconv bench` on a machine that
# has an OpenCL driver (NVIDIA's libnvidia-opencl.so.1) and a Python 3.12 with numpy (and torch), but
# no network, no pyopencl, no CLBlast and no ICD loader. Everything else comes from the bundle that
# `make device-bundle` fetched into tools/device-bundle/ (carried with the working tree as an ignored
# path): pyopencl's cp312 wheel, Debian 12's CLBlast and ICD loader unpacked, a pyclblast cp312
# wheel (or its sdist, built here when a compiler and Cython are at hand).
#
#   OUT=/some/dir tools/device-check.sh
#
# Environment (all optional):
#   OUT               where logs and JSON go (default ./device-check-out)
#   PYTHON            the interpreter (default: python3.12, else python3)
#   DEVICE_BUNDLE     the bundle (default tools/device-bundle next to this script)
#   ICD_LIBRARY       the OpenCL driver library (default: libnvidia-opencl.so.1, searched for);
#                     (a path, or a bare name that the dynamic loader finds); the rehearsal on
#                     a CPU machine passes PoCL's libpocl.so.2
#   DEVICE_SPEC       clconv device spec for the suite and the bench (default: gpu, else the first)
#   TEST_ARGS         pytest arguments (default: the whole suite, quiet)
#   TEST_TIMEOUT      seconds for the suite (default 420), BENCH_TIMEOUT for the bench (default 240)
#   BENCH_ARGS        extra `clconv bench` arguments (default: a short run)
# Writes to $OUT: device-check.json (summary), env.txt, info.txt, pytest.log, pytest.xml,
# bench.{txt,json,csv}, bench.log. Exit status: 0 when the suite passed and the bench ran.
set -uo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
bundle=${DEVICE_BUNDLE:-$repo/tools/device-bundle}
OUT=${OUT:-$PWD/device-check-out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/clconv-device-check.XXXXXX")
log() { echo "device-check: $*" | tee -a "$OUT/env.txt"; }
: > "$OUT/env.txt"

# -- the interpreter -------------------------------------------------------------------------------
PYTHON=${PYTHON:-$(command -v python3.12 || command -v python3)}
pyver=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
log "python $PYTHON ($pyver)"
[ "$pyver" = 3.12 ] || log "WARNING: the bundle's binary wheels are for CPython 3.12, this is $pyver"
[ -d "$bundle/wheels" ] || { log "no bundle at $bundle: run 'make device-bundle' where there is network"; exit 2; }

# -- the OpenCL driver: an ICD file of our own, so that no system configuration is needed -----------
find_icd_library() {
  local name=libnvidia-opencl.so.1 f
  f=$(ldconfig -p 2>/dev/null | awk -v n="$name" '$1 == n && /x86-64/ {print $NF; exit}')
  [ -n "$f" ] && { echo "$f"; return; }
  for f in /etc/OpenCL/vendors/nvidia.icd; do   # an installed ICD file names it
    [ -f "$f" ] && { f=$(head -1 "$f"); [ -f "$f" ] && { echo "$f"; return; }; }
  done
  for f in /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/lib /usr/local/nvidia/lib64 /usr/local/nvidia/lib \
           /usr/lib/x86_64-linux-gnu/nvidia/current /usr/lib/nvidia* /usr/local/cuda*/compat \
           /run/nvidia/driver/usr/lib/x86_64-linux-gnu; do
    [ -e "$f/$name" ] && { echo "$f/$name"; return; }
  done
  find / -xdev -name "$name" -not -path '*/proc/*' 2>/dev/null | head -1
}
ICD_LIBRARY=${ICD_LIBRARY:-$(find_icd_library)}
if [ -z "$ICD_LIBRARY" ] || { [ ! -e "$ICD_LIBRARY" ] && [[ "$ICD_LIBRARY" == */* ]]; }; then
  log "no OpenCL driver library found (libnvidia-opencl.so.1); set ICD_LIBRARY=/path/to/it"; exit 2
fi
mkdir -p "$work/vendors"
echo "$ICD_LIBRARY" > "$work/vendors/device.icd"
export OCL_ICD_VENDORS="$work/vendors"        # ocl-icd (Debian's and pyopencl's bundled one)
export OCL_ICD_FILENAMES="$ICD_LIBRARY"
log "ICD library $ICD_LIBRARY"

# -- CLBlast and the ICD loader from Debian's packages, unpacked ------------------------------------
lib="$bundle/prefix/usr/lib/x86_64-linux-gnu"
export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# -- Python packages: the bundle's wheels unpacked onto PYTHONPATH (no pip, venv or network needed) --
site="$work/site"
mkdir -p "$site"
for whl in "$bundle"/wheels/*.whl; do "$PYTHON" -m zipfile -e "$whl" "$site" || log "cannot unpack $whl"; done
export PYTHONPATH="$repo:$site" PYTHONNOUSERSITE=1 PYTHONDONTWRITEBYTECODE=1
export CLCONV_CACHE_DIR="$work/cache" MPLBACKEND=Agg
if ! "$PYTHON" -c 'import pyclblast' 2>>"$OUT/env.txt"; then
  # The wheel built on Debian 12 did not load (another glibc, another Python): build the sdist here.
  log "pyclblast wheel does not load; building the sdist (needs a C compiler and Cython)"
  tar -xzf "$bundle"/sdist/pyclblast-*.tar.gz -C "$work" &&
    (cd "$work"/pyclblast-*/ &&
     CFLAGS="-I$bundle/prefix/usr/include" LDFLAGS="-L$lib" \
       "$PYTHON" -m pip wheel --no-deps --no-build-isolation --no-index -w "$work/built" . \
       >>"$OUT/env.txt" 2>&1) &&
    "$PYTHON" -m zipfile -e "$work"/built/pyclblast-*.whl "$site" ||
    log "building pyclblast failed: clconv runs without CLBlast (only algorithm='direct')"
fi

"$PYTHON" - >>"$OUT/env.txt" 2>&1 <<'PY'
import platform, sys
print("platform", platform.platform(), "python", sys.version.split()[0])
import numpy, pyopencl
print("numpy", numpy.__version__, "pyopencl", pyopencl.VERSION_TEXT, pyopencl.__file__)
try:
    import pyclblast
    print("pyclblast", pyclblast.__file__)
except ImportError as e:
    print("pyclblast missing:", e)
with open("/proc/self/maps") as f:  # which libclblast / libOpenCL were really loaded
    libs = sorted({l.split()[-1] for l in f if "clblast" in l or "OpenCL" in l})
print("\n".join("loaded " + l for l in libs))
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
except Exception as e:
    print("torch unavailable:", e)
PY
cd "$repo"
"$PYTHON" -m clconv info > "$OUT/info.txt" 2>&1
cat "$OUT/info.txt"
DEVICE_SPEC=${DEVICE_SPEC:-$("$PYTHON" -c 'import clconv
try: print(clconv.device("gpu").index)
except Exception: print(clconv.current_device().index)' 2>/dev/null)}
log "device under test: $DEVICE_SPEC"

# -- the test suite on that device ------------------------------------------------------------------
t0=$(date +%s)
# shellcheck disable=SC2086
CLCONV_TEST_DEVICES="$DEVICE_SPEC" timeout "${TEST_TIMEOUT:-420}" "$PYTHON" -m pytest -p no:cacheprovider \
  --junitxml="$OUT/pytest.xml" ${TEST_ARGS:--q} > "$OUT/pytest.log" 2>&1
test_rc=$?
test_s=$(( $(date +%s) - t0 ))
tail -5 "$OUT/pytest.log"

# -- a short bench, torch's CUDA conv2d as a peer where torch sees a GPU ----------------------------
t0=$(date +%s)
# shellcheck disable=SC2086
timeout "${BENCH_TIMEOUT:-240}" "$PYTHON" -m clconv bench --device "$DEVICE_SPEC" --out "$OUT/bench" \
  --no-plot --no-progress ${BENCH_ARGS:---repeat 3 --time-per-peer 1 --no-latency --no-gemm} \
  > "$OUT/bench.log" 2>&1
bench_rc=$?
bench_s=$(( $(date +%s) - t0 ))
tail -25 "$OUT/bench.log"

# -- the summary ------------------------------------------------------------------------------------
"$PYTHON" - "$OUT" "$test_rc" "$test_s" "$bench_rc" "$bench_s" "$ICD_LIBRARY" "$DEVICE_SPEC" <<'PY'
import json, os, sys, xml.etree.ElementTree as ET
out, test_rc, test_s, bench_rc, bench_s, icd, spec = sys.argv[1:]
summary = {"icd_library": icd, "device_spec": spec, "tests": {"rc": int(test_rc), "seconds": int(test_s)},
           "bench": {"rc": int(bench_rc), "seconds": int(bench_s)}}
try:
    import clconv
    d = clconv.device(spec)
    summary["device"] = {"name": d.name, "platform": d.platform_name, "opencl": d.opencl_version,
                         "driver": d.driver_version, "fp64": d.fp64, "fp16": d.fp16}
except Exception as e:
    summary["device"] = f"{type(e).__name__}: {e}"
try:
    suite = ET.parse(os.path.join(out, "pytest.xml")).getroot()
    suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
    summary["tests"].update({k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")})
    summary["tests"]["failed"] = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
                                  if c.find("failure") is not None or c.find("error") is not None][:50]
except Exception as e:
    summary["tests"]["report"] = f"no junit report: {e}"
path = os.path.join(out, "bench.json")
summary["bench"]["json"] = path if os.path.exists(path) else None
with open(os.path.join(out, "device-check.json"), "w") as f:
    json.dump(summary, f, indent=2)
print(json.dumps(summary, indent=2))
PY
rm -rf "$work"
[ "$test_rc" = 0 ] && [ "$bench_rc" = 0 ]
