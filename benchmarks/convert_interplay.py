"""Where `clconv.torch.convert`'s forward loses its time: the same convolutions replayed alone.

    python -m benchmarks.convert_interplay [--model resnet18] [--rounds 15] [--passive]

In one process (torch with 2 threads, as a user of convert runs it), a converted network's forward
(batch 1, 224x224, eval, no_grad) against its own convolutions, recorded during one forward and
replayed back-to-back with the same arguments:
  forward            the converted model, torch's ops (pooling, residual adds, the classifier)
                     between clconv's convolutions;
  forward (copies)   the same with CLCONV_TORCH_ZERO_COPY=0: operands uploaded and results
                     downloaded (by default, on a device whose memory is the host's, they are
                     read and written in the tensors' memory);
  replay (device)    the convolutions on device arrays, the queue finished once at the end;
  replay (numpy)     each convolution's input uploaded and its result downloaded, as convert does;
  replay + torch.add as 'numpy', after a small torch op before each convolution (a (1,64,56,56)
                     add: what a residual add is), so that torch's OpenMP workers are spinning
                     when each convolution starts;
  torch.add alone    those adds without the convolutions.
The rounds alternate the six; printed: medians in ms. --passive runs the measurement again in a
child process with OMP_WAIT_POLICY=PASSIVE (libgomp reads it when torch loads). See
docs/performance.md, "Running clconv and torch in one process".
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time


COPIES = "CLCONV_TORCH_ZERO_COPY"


def measure(model_name: str, rounds: int) -> dict[str, float]:
    """The medians (ms) of the six cases of the module doc, in this process."""
    import numpy as np
    import pyopencl.array as cla
    import torch

    torch.set_num_threads(2)
    import clconv
    import clconv.torch as ct
    from clconv import torch_fold
    from clconv.torch_ops import host_result

    from benchmarks.whole_networks import build

    calls: list[tuple[tuple, dict]] = []
    recording = [False]
    conv2d = torch_fold.OPS[2][0]

    def recorded(*args, **kwargs):
        if recording[0]:
            calls.append((args, kwargs))
        return conv2d(*args, **kwargs)

    torch_fold.OPS[2] = (recorded, *torch_fold.OPS[2][1:])
    dev = clconv.current_device()
    x = torch.randn(1, 3, 224, 224)
    a, b = torch.randn(1, 64, 56, 56), torch.randn(1, 64, 56, 56)
    with torch.no_grad():
        model = ct.convert(build(model_name))
        for _ in range(3):
            model(x)
        recording[0] = True
        os.environ[COPIES] = "0"  # recorded with numpy operands and results
        model(x)
        del os.environ[COPIES]
        recording[0] = False
        torch_fold.OPS[2] = (conv2d, *torch_fold.OPS[2][1:])
        calls = [((np.array(args[0]), *args[1:]), kwargs) for args, kwargs in calls]
        on_device = [((cla.to_device(dev.queue, args[0]), *args[1:]), kwargs)
                     for args, kwargs in calls]

        def forward() -> None:
            model(x)

        def forward_copies() -> None:
            os.environ[COPIES] = "0"
            model(x)
            del os.environ[COPIES]

        def replay_device() -> None:
            for args, kwargs in on_device:
                conv2d(*args, **kwargs)
            dev.queue.finish()

        def replay_numpy() -> None:
            for args, kwargs in calls:
                host_result(conv2d(*args, **kwargs))

        def replay_after_add() -> None:
            for args, kwargs in calls:
                torch.add(a, b)
                host_result(conv2d(*args, **kwargs))

        def adds() -> None:
            for _ in calls:
                torch.add(a, b)

        cases = {"forward": forward, "forward (copies)": forward_copies,
                 "replay (device)": replay_device,
                 "replay (numpy)": replay_numpy, "replay + torch.add": replay_after_add,
                 "torch.add alone": adds}
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(rounds):
            for name, case in cases.items():
                start = time.perf_counter()
                case()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()} | {
        "convolutions": float(len(calls))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.convert_interplay",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet18", choices=("resnet18", "mobilenet_v2"))
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--passive", action="store_true",
                        help="also measure with OMP_WAIT_POLICY=PASSIVE (a child process)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    figures = measure(args.model, args.rounds)
    policy = os.environ.get("OMP_WAIT_POLICY", "(unset)")
    if not args.child:
        from benchmarks.fair import command_line

        import clconv

        print(command_line())
        print(f"device: {clconv.current_device().name}; torch with 2 threads in the same process; "
              f"{args.model}, batch 1, 224x224, {int(figures['convolutions'])} convolutions; "
              f"medians of {args.rounds} rounds, ms")
    print(f"OMP_WAIT_POLICY={policy}: " + ", ".join(
        f"{name} {ms:.2f}" for name, ms in figures.items() if name != "convolutions"), flush=True)
    if args.passive and not args.child:
        from benchmarks import child_env

        env = child_env() | {"OMP_WAIT_POLICY": "PASSIVE"}
        subprocess.run([sys.executable, "-m", "benchmarks.convert_interplay", "--child",
                        "--model", args.model, "--rounds", str(args.rounds)], env=env, check=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
