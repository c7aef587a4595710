#!/usr/bin/env bash
# Fetches what tools/device-check.sh carries to a GPU machine that has an OpenCL driver and Python 3.12
# (numpy, torch) but no network, pyopencl or CLBlast (`make device-bundle`):
#   wheels/   pyopencl (cp312 manylinux) and its pure-Python dependencies, pytest and hypothesis
#             (the suite's), and pyclblast built here as a cp312 wheel against Debian's CLBlast
#   sdist/    pyclblast's sdist (fallback: device-check.sh builds it there if the wheel will not load)
#   debs/     Debian 12's libclblast1, libclblast-dev, ocl-icd-libopencl1, opencl-c-headers
#   prefix/   those packages unpacked (dpkg -x): LD_LIBRARY_PATH=prefix/usr/lib/x86_64-linux-gnu
#   MANIFEST  versions, sizes and sha256 of everything above
# Needs: Debian 12 (apt-get download), network, a Python 3.12 (PY312=..., else python3.12 on PATH or
# pyenv's) with pip, a C compiler and libclblast-dev/opencl-c-headers for the pyclblast wheel.
# numpy is not carried (the target has it). The bundle (tools/device-bundle/, which ignores itself
# through its own .gitignore) travels as an ignored path; it must stay under 64 MiB with the tree.
set -euo pipefail
dir=${1:-tools/device-bundle}
here=$(cd "$(dirname "$0")/.." && pwd)
PIP="${PIP:-$here/.venv/bin/python -m pip}"
if [ -z "${PY312:-}" ]; then   # the first interpreter that really is 3.12 (a pyenv shim may not be)
  for c in $(command -v python3.12 2>/dev/null) /usr/bin/python3.12 /root/.pyenv/versions/3.12*/bin/python; do
    if "$c" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then PY312=$c; break; fi
  done
fi
PYOPENCL_SPEC=${PYOPENCL_SPEC:-pyopencl}
PYCLBLAST_SPEC=${PYCLBLAST_SPEC:-pyclblast==1.4.0}
DEBS="libclblast1 libclblast-dev ocl-icd-libopencl1 opencl-c-headers"

rm -rf "$dir"
mkdir -p "$dir/wheels" "$dir/sdist" "$dir/debs" "$dir/prefix"
echo '*' > "$dir/.gitignore"   # the folder ignores itself: fetched, never committed
dir=$(cd "$dir" && pwd)

echo "== wheels for CPython 3.12 (manylinux x86-64)"
$PIP download -q --python-version 3.12 --only-binary=:all: --platform manylinux_2_28_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform any \
  -d "$dir/wheels" "$PYOPENCL_SPEC" pytest hypothesis
rm -f "$dir/wheels"/numpy-*.whl   # the target's own numpy is used

echo "== pyclblast: sdist, and a cp312 wheel built here"
$PIP download -q --no-binary=pyclblast --no-deps -d "$dir/sdist" "$PYCLBLAST_SPEC"
if [ -n "${PY312:-}" ] && "$PY312" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
  "$PY312" -m pip wheel -q --no-deps -w "$dir/wheels" "$dir"/sdist/pyclblast-*.tar.gz
else
  echo "note: no Python 3.12 here (set PY312=...): no pyclblast wheel; device-check.sh will build the sdist"
fi

echo "== Debian packages: $DEBS"
(cd "$dir/debs" && apt-get download $DEBS >/dev/null 2>&1 || { apt-get update -qq && apt-get download $DEBS; })
for deb in "$dir"/debs/*.deb; do dpkg -x "$deb" "$dir/prefix"; done
# docs and the 13 MiB static library are of no use there (the .deb keeps them anyway)
rm -rf "$dir/prefix/usr/share/doc" "$dir/prefix/usr/share/lintian" "$dir/prefix/usr/share/man" \
  "$dir"/prefix/usr/lib/x86_64-linux-gnu/*.a

{
  echo "# device bundle made $(date -u +%FT%TZ) on $(. /etc/os-release && echo "$PRETTY_NAME")"
  for deb in "$dir"/debs/*.deb; do echo "deb $(dpkg-deb -f "$deb" Package) $(dpkg-deb -f "$deb" Version)"; done
  (cd "$dir" && find wheels sdist debs -type f | sort | while read -r f; do
     echo "file $f $(stat -c %s "$f") $(sha256sum "$f" | cut -d' ' -f1)"; done)
} > "$dir/MANIFEST"
size=$(du -sm "$dir" | cut -f1)
echo "bundle: $dir, ${size} MiB"
[ "$size" -lt 60 ] || { echo "the bundle is ${size} MiB: too big to travel (64 MiB with the tree)"; exit 1; }
