"""Benchmark: Dask's overhead next to the work, and a device group's split.

    python -m benchmarks.dask_scaling [--rounds 5] [--batch 32]

1. A distributed.LocalCluster of 2 worker processes x 1 thread runs a batch of (64, 56, 56) images
   through a 3x3 64->64 convolution (padding 1) in batch chunks of 4, against one in-process
   `clconv.conv2d` call on the whole batch (same device kind). Timed rounds alternate the two;
   medians are printed, with the ratio. "persisted": the input already lies on the workers (as data
   read by them would); "from client": the numpy input travels from this process too. Both gather
   the result into this process.
2. A device group of every usable device (PoCL + rusticl's llvmpipe with RUSTICL_ENABLE=llvmpipe):
   the measured speeds, the split it chose, its time and its largest difference from one device's
   call.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics

import numpy as np

import clconv
from benchmarks.timing import runs


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.dask_scaling",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--chunk", type=int, default=4)
    ap.add_argument("--device", default=os.environ.get("CLCONV_DEVICE", "pocl"),
                    help="the device of the in-process call and of every worker")
    args = ap.parse_args()

    import dask.array as da
    import distributed

    import clconv.dask as cd

    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, 64, 56, 56)).astype(np.float32)
    w = (rng.standard_normal((64, 64, 3, 3)) / 24).astype(np.float32)
    b = rng.standard_normal(64).astype(np.float32)
    dev = clconv.device(args.device)
    print(f"command: python -m benchmarks.dask_scaling --rounds {args.rounds} --batch {args.batch} "
          f"--chunk {args.chunk} --device {args.device!r}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"device: {dev.name} [{dev.platform_name}]")
    gflop = 2 * args.batch * 64 * 56 * 56 * 64 * 9 / 1e9

    with dev:
        expect = clconv.conv2d(x, w, b, padding=1)  # warm: kernels, algorithm='auto''s choice

    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None, silence_logs=40)
    client = distributed.Client(cluster)
    try:
        # One core per worker process, as one GPU per worker on a real cluster: PoCL would
        # otherwise start a thread per core in each worker (4 threads on 2 cores).
        client.register_plugin(cd.DevicePlugin([args.device], env={
            "POCL_MAX_PTHREAD_COUNT": str(max(1, (os.cpu_count() or 2) // 2))}))
        xd = da.from_array(x, chunks=(args.chunk, 64, 56, 56))
        xp = xd.persist()
        distributed.wait(xp)

        def in_process() -> None:
            with dev:
                clconv.conv2d(x, w, b, padding=1)

        def in_process_chunks() -> None:  # the same chunks, one after the other, no Dask
            with dev:
                for i in range(0, args.batch, args.chunk):
                    clconv.conv2d(x[i:i + args.chunk], w, b, padding=1)

        def dask_persisted() -> np.ndarray:
            return cd.conv2d(xp, w, b, padding=1).compute()

        def dask_from_client() -> np.ndarray:
            return cd.conv2d(xd, w, b, padding=1).compute()

        got = dask_persisted()  # warm: each worker builds its kernels and makes 'auto''s choice
        dask_from_client()
        err = float(np.abs(got - expect).max())
        in_process_chunks()
        t_one, t_pers, t_client, t_chunks = [], [], [], []
        for _ in range(args.rounds):  # interleaved: the machine's other load hits all three
            t_one += runs(in_process, 1)
            t_pers += runs(dask_persisted, 1)
            t_client += runs(dask_from_client, 1)
            t_chunks += runs(in_process_chunks, 1)
        one, pers, cli, chunked = (statistics.median(t) for t in (t_one, t_pers, t_client,
                                                                  t_chunks))
        print(f"in-process conv2d, batch {args.batch}: {one * 1e3:8.1f} ms "
              f"({gflop / one:.1f} GFLOP/s)")
        print(f"in-process, {args.batch // args.chunk} calls of {args.chunk} images: "
              f"{chunked * 1e3:8.1f} ms = {chunked / one:.2f}x (the chunks' own cost, no Dask)")
        print(f"dask, 2 workers x 1 thread, chunks of {args.chunk}, persisted: "
              f"{pers * 1e3:8.1f} ms = {pers / one:.2f}x   (target <= 1.3x)")
        print(f"dask, 2 workers x 1 thread, chunks of {args.chunk}, from client: {cli * 1e3:8.1f} "
              f"ms = {cli / one:.2f}x")
        print(f"max |dask - in-process| = {err:.3g} (medians of {args.rounds} interleaved rounds)")
    finally:
        client.close()
        cluster.close()

    group = clconv.device("all")
    print(f"\ndevice group: {group}")
    if len(group) < 2:
        print("  only one usable device (for two on one machine: apt-get install mesa-opencl-icd, "
              "RUSTICL_ENABLE=llvmpipe)")
    with group, group.record() as splits:  # what each call split (none on a one-device group)
        y = clconv.conv2d(x, w, b, padding=1)  # the first call measures the speeds
        t_group = statistics.median(runs(lambda: clconv.conv2d(x, w, b, padding=1), args.rounds))
    speeds = next(iter(group.measured().values()), ())
    for d, s in zip(group.devices, speeds):
        print(f"  speed {s:8.2f} images/s  {d.name} [{d.platform_name}]")
    for label, split in (("first call", splits[0].parts if splits else ()),
                         ("then", splits[-1].parts if splits else ())):
        print(f"  split ({label}): " + ", ".join(f"[{a}, {z}) -> {d.name}" for d, a, z in split))
    scale = float(np.abs(expect).max())
    print(f"  group conv2d: {t_group * 1e3:.1f} ms; max |group - one device| = "
          f"{float(np.abs(y - expect).max()):.3g} (output max {scale:.3g})")


if __name__ == "__main__":
    main()
