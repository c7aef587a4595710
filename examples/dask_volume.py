"""A 3-d volume too large for one column buffer, convolved through Dask with a progress bar.

    .venv/bin/python examples/dask_volume.py [--size 64] [--chunk 32] [--scheduler threads]

The volume (1, 8, S, S, S) goes through a 3x3x3 8->16 convolution with reflect padding. Its
im2col column buffer (C_in * 27 * S^3 floats) is larger than the workspace limit this example sets,
so one direct call would have to split its work; Dask instead cuts the volume into chunks (each with
the halo its receptive field needs, and the reflection made at the volume's own faces), convolves
them on the workers' devices and assembles the result. The result is checked against a direct
clconv.conv3d call on a slab of the volume (a slab at the volume's face, so the reflect padding is
checked too).
"""

from __future__ import annotations

import argparse
import time

import dask
import dask.array as da
import numpy as np

import clconv
import clconv.dask as cd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64, help="edge S of the S^3 volume")
    ap.add_argument("--chunk", type=int, default=32, help="edge of a chunk")
    ap.add_argument("--scheduler", default="threads", choices=("threads", "distributed"))
    args = ap.parse_args()

    s, c_in, c_out = args.size, 8, 16
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((c_out, c_in, 3, 3, 3)) / 15).astype(np.float32)
    b = rng.standard_normal(c_out).astype(np.float32)
    # The volume is made chunk by chunk by the workers (as it would be read from disk).
    vol = da.random.default_rng(1).standard_normal((1, c_in, s, s, s), dtype=np.float32,
                                                   chunks=(1, c_in, args.chunk, args.chunk,
                                                           args.chunk))
    columns = c_in * 27 * s ** 3 * 4
    limit = columns // 8  # the direct call's workspace limit here: an eighth of its columns
    print(f"volume {vol.shape}, chunks {vol.chunksize}; the direct call's column buffer would be "
          f"{columns / 2**20:.0f} MiB, more than the workspace limit of {limit / 2**20:.0f} MiB")

    y = cd.conv3d(vol, w, b, padding=1, padding_mode="reflect")
    t0 = time.perf_counter()
    if args.scheduler == "distributed":
        import distributed
        from distributed import progress

        with distributed.LocalCluster(n_workers=2, threads_per_worker=1,
                                      dashboard_address=None) as cluster, \
                distributed.Client(cluster) as client:
            client.register_plugin(cd.DevicePlugin())
            vol, y = dask.persist(vol, y)
            progress(y)
            out, xin = dask.compute(y[..., :8, :, :], vol[..., :9, :, :])
    else:
        from dask.diagnostics import ProgressBar

        with ProgressBar():
            vol, y = dask.persist(vol, y, scheduler="threads")
        out, xin = dask.compute(y[..., :8, :, :], vol[..., :9, :, :], scheduler="threads")
    print(f"\nconvolved {y.shape} in {time.perf_counter() - t0:.1f} s")

    # Check: the first 8 output planes need input planes 0..8 (and the reflection of plane 1).
    direct = clconv.conv3d(xin, w, b, padding=1, padding_mode="reflect", workspace_limit=limit)
    err = float(np.abs(out - direct[..., :8, :, :]).max())
    scale = float(np.abs(direct).max())
    print(f"max |dask - direct call on a slab| = {err:.3g} (values up to {scale:.3g})")
    if not err <= 1e-4 * scale:
        raise SystemExit("mismatch")


if __name__ == "__main__":
    main()
