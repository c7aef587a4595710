"""Command line: `clconv info | demo | bench | tune | cache` (also `python -m clconv ...`).

Every option is checked by argparse before anything runs: a bad value ends with a usage line and
exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any, Callable

from ..blas import clblast as gemm
from ..runtime.device import default_device_reason, devices
from ..runtime.errors import DeviceNotFoundError, UnsupportedError

__all__ = ["build_parser", "info", "main", "prog_name"]

DEVICE_HELP = "device spec: an index, P:D, cpu, gpu or part of a name (default: $CLCONV_DEVICE, " \
              "else the first GPU, else the first CPU; see `info`)"
#: The subcommands' parsers, so that errors found after parsing print the subcommand's usage.
_COMMANDS: dict[str, argparse.ArgumentParser] = {}


def prog_name() -> str:
    """'python -m clconv' when run as a module, else 'clconv' (the console script)."""
    return "python -m clconv" if os.path.basename(sys.argv[0] or "") == "__main__.py" else "clconv"


def info(spec: str | None = None) -> int:
    """Prints platforms, devices, capabilities, CLBlast's presence and the tuning each device
    would load, the default device (or `spec`'s) and the cache folder."""
    import pyopencl as cl

    from ..blas import tuning
    from ..runtime import config

    devs = devices()  # first: clconv's driver settings go in before the platforms start
    try:
        platforms = cl.get_platforms()
    except cl.Error:
        platforms = []
    print(f"pyopencl {cl.VERSION_TEXT}")
    if not platforms:
        print("no OpenCL platform found")
    for p_index, platform in enumerate(platforms):
        print(f"platform {p_index}: {platform.name.strip()} ({platform.version.strip()}), "
              f"vendor {platform.vendor.strip()}")
        for d in (d for d in devs if d.platform_index == p_index):
            state = "usable" if d.usable else f"UNUSABLE: {d.unusable_reason}"
            print(f"  device {d.index} ({d.platform_index}:{d.device_index}) {d.kind}: {d.name}")
            print(f"    {d.opencl_version}, driver {d.driver_version}")
            print(f"    fp64 {'yes' if d.fp64 else 'no'}, fp16 {'yes' if d.fp16 else 'no'}, "
                  f"global memory {d.global_mem_bytes / 2**30:.2f} GiB, "
                  f"max allocation {d.max_alloc_bytes / 2**30:.2f} GiB")
            print(f"    {state}")
            if d.usable and gemm.available():
                print(f"    CLBlast tuning: {_tuning_source(tuning, d)}")
    reason = gemm.missing_reason()
    print("CLBlast (pyclblast): " + ("found" if reason is None else f"NOT FOUND: {reason}"))
    folder = config.cache_dir()
    state = "" if folder.is_dir() else " (not a folder: nothing is kept)" if folder.exists() \
        else " (not made yet)"
    print(f"cache folder (CLBlast tuning, 'auto' choices): {folder}{state} "
          f"(see `{prog_name()} cache`)")
    if spec is not None:
        from ..runtime.device import device

        dev = device(spec)  # checked by the option already
        print(f"selected device (--device {spec}): {dev.index} {dev.name} [{dev.platform_name}]")
        return 0
    try:
        dev, why = default_device_reason()
        print(f"default device: {dev.index} {dev.name} [{dev.platform_name}], because: {why}")
    except DeviceNotFoundError as err:
        print(f"default device: none: {err}")
        return 1
    return 0


def _tuning_source(tuning: Any, listed: Any) -> str:
    """Which CLBlast tuning `listed` (an entry of devices()) would load, in a few words."""
    try:
        from ..runtime.device import device

        entry, source = tuning.find_entry(device(listed.index))
    except Exception as err:  # noqa: BLE001 - info reports, it does not fail
        return f"unknown ({type(err).__name__}: {err})"
    if entry is None:
        return f"none, CLBlast's defaults (`{prog_name()} tune` tunes it)"
    return source + ("" if tuning.enabled() else f" (but {tuning.ENV_VAR}=off disables loading)")


# --------------------------------------------------------------------------------------------------
# Option types: each raises ArgumentTypeError, which argparse turns into a usage error (exit 2)

def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an int") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def device_spec(text: str) -> str:
    """--device: resolved now, so that a wrong spec is a usage error before anything runs."""
    from ..runtime.device import device

    if text.strip().lower() == "all" or "," in text:
        # clconv.device's device groups split a batch between devices; a command runs on one
        raise argparse.ArgumentTypeError(
            f"{text!r} names a device group (clconv.device's, which splits a batch between "
            f"devices); the command runs on one device: give its index, P:D, cpu, gpu or part of "
            f"its name (see `info`)")
    try:
        device(text)
    except DeviceNotFoundError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    except UnsupportedError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def existing_folder_file(text: str) -> str:
    """A file to write whose folder exists (nothing is created besides the file)."""
    folder = _folder_of_file(text, "name a file in it")
    if not os.path.isdir(folder):
        raise argparse.ArgumentTypeError(f"the folder {folder} of {text!r} does not exist; "
                                         f"create it first or choose another path")
    return _writable_in(folder, text)


def output_prefix(text: str) -> str:
    """bench --out PREFIX: '-', or a prefix whose folder exists or can be made in an existing
    folder (the default, bench-out/bench, makes bench-out in the working folder)."""
    if text == "-":
        return text
    folder = _folder_of_file(text, f"the prefix names files (e.g. {os.path.join(text, 'bench')})")
    parent = folder if os.path.isdir(folder) else os.path.dirname(folder)
    if not os.path.isdir(parent):
        raise argparse.ArgumentTypeError(f"the folder {os.path.dirname(folder)} of {text!r} does "
                                         f"not exist; create it first or choose another prefix")
    return _writable_in(parent, text)


def _folder_of_file(text: str, hint: str) -> str:
    """The folder of the file path `text`; an error (saying `hint`) when `text` is a folder."""
    path = os.path.abspath(os.path.expanduser(text))
    if os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{text!r} is a folder; {hint}")
    return os.path.dirname(path)


def _writable_in(folder: str, text: str) -> str:
    """`text`, once its (existing) `folder` is writable."""
    if not os.access(folder, os.W_OK):
        raise argparse.ArgumentTypeError(f"the folder {folder} of {text!r} is not writable")
    return text


def json_path(text: str) -> str:
    return text if text == "-" else existing_folder_file(text)


def layer_spec(text: str) -> Any:
    """--layer text -> layer_spec.Layer."""
    from .layer_spec import parse_layer

    try:
        return parse_layer(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix(f"--layer {text!r}: ")) from None


def peer_list(text: str) -> list[str]:
    try:
        default_peers = _benchmarks("peers").default_peers
    except UnsupportedError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    peers = [p.strip() for p in text.split(",") if p.strip()]
    known = default_peers()
    unknown = [p for p in peers if p not in known]
    if unknown or not peers:
        raise argparse.ArgumentTypeError(f"unknown peer(s) {', '.join(unknown) or repr(text)}; "
                                         f"choose from {','.join(known)}")
    return peers


def network_list(text: str) -> str:
    """bench --layers: comma-separated names of benchmarks.fair.NETS."""
    try:
        known = tuple(_benchmarks("fair").NETS)
    except UnsupportedError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return ",".join(_known_names(text, known, "layer set(s)"))


def algorithm_list(text: str) -> list[str]:
    """bench --algorithms: comma-separated clconv algorithm names."""
    from ..ops.conv_select import ALGORITHMS

    return _known_names(text, ALGORITHMS, "algorithm(s)")


def _known_names(text: str, known: tuple[str, ...], what: str) -> list[str]:
    """The comma-separated names of `text`, each one of `known` (else an argparse error)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(unknown) or repr(text)}; "
                                         f"choose from {','.join(known)}")
    return names


def precision_list(text: str) -> list[int]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values or any(v not in ("16", "32", "64") for v in values):
        raise argparse.ArgumentTypeError(f"wants a comma-separated list of 16, 32, 64, "
                                         f"got {text!r}")
    return [int(v) for v in values]


def kernel_list(text: str) -> list[str]:
    from ..blas.tuning import KERNELS

    names = [k.strip() for k in text.split(",") if k.strip()]
    known = list(KERNELS)  # GemmRoutine among them
    unknown = [k for k in names if k not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown kernel(s) {', '.join(unknown) or repr(text)}; "
                                         f"choose from {','.join(known)}")
    return names


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """A default in each help line that does not say it already (none for flags or None);
    descriptions and epilogs keep their line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text or default is None or default is argparse.SUPPRESS
                or default == [] or action.nargs == 0 or not action.option_strings):
            return text
        return text + " (default: %(default)s)"


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    from .. import __version__
    from .layer_spec import LAYER_HELP

    prog = prog or prog_name()
    parser = argparse.ArgumentParser(
        prog=prog, formatter_class=_Formatter,
        description="clconv: neural-network convolutions on any OpenCL device, with PyTorch's "
                    "semantics.")
    parser.add_argument("--version", action="version", version=f"clconv {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
        made = sub.add_parser(name, help=help, description=description or help,
                              formatter_class=_Formatter)
        _COMMANDS[name] = made
        return made

    info_cmd = command("info", "OpenCL platforms and devices, CLBlast and its tuning, the default "
                               "device, the cache folder")
    info_cmd.add_argument("--device", type=device_spec, default=None,
                          help=DEVICE_HELP.replace("device spec:", "also show which device this "
                                                   "spec selects:"))

    demo = command("demo", "why im2col + GEMM beats loops: times each path and stage on your "
                           "device",
                   "Runs one layer with the direct loops, im2col + CLBlast GEMM (and each of its "
                   "stages: im2col, GEMM, epilogue), im2col + clconv's packed GEMM and the "
                   "implicit GEMM, checks that they agree, times them with OpenCL profiling "
                   "events, shows each one's speed-up over the loops, FLOP rate and memory, and "
                   "draws it all into a PNG.")
    demo.add_argument("--device", type=device_spec, default=None, help=DEVICE_HELP)
    demo.add_argument("--layer", type=layer_spec, default=None, metavar="SPEC",
                      help="the layer (the bench's --layer forms; default: ResNet-50's 3x3 "
                           "conv, 1,64,56,56,64,3,1,1)")
    demo.add_argument("--repeat", type=positive_int, default=5,
                      help="timed runs per algorithm and stage (median)")
    demo.add_argument("--out", type=existing_folder_file, default="clconv-demo.png", metavar="PNG",
                      help="where to write the chart (relative paths: the working folder; its "
                           "folder must exist)")
    demo.add_argument("--no-plot", action="store_true", help="no PNG")
    demo.add_argument("--no-progress", action="store_true", help="no progress line")

    bench = command("bench", "algorithms and peers (numpy, torch, CLBlast convgemm) on network "
                             "layers: GFLOP/s, error, memory, latency; --layers: every "
                             "convolution of ResNet-18 / MobileNetV2 against torch (fair method)",
                    "Without --layers: each algorithm and peer timed alone on the classic\n"
                    "layers (or --layer), with errors, memory and first-call latency, written to\n"
                    "--out's files. With --layers NETS: every distinct convolution of the\n"
                    "networks (or the classic layers) against torch CPU by the fair method (torch and clconv each in its\n"
                    "own warm process, --rounds rounds of alternating blocks of --block calls\n"
                    "with a pause at each hand-over, medians), per-layer ratios and their\n"
                    "geometric mean. Needs the benchmarks package (benchmarks/ beside clconv/).")
    bench.epilog = "--layer forms:\n  " + LAYER_HELP.replace("\n", "\n  ")
    bench.add_argument("--device", type=device_spec, default=None, help=DEVICE_HELP)
    bench.add_argument("--layer", action="append", type=layer_spec, default=[], metavar="SPEC",
                       help="a layer instead of the built-in table (repeatable; forms below)")
    bench.add_argument("--peers", type=peer_list, default=None, metavar="LIST",
                       help="comma-separated subset of clconv's algorithms (direct, im2col, ..., "
                            "auto) and numpy, torch, torch-cuda, convgemm (default: all)")
    bench.add_argument("--dtype", default="float32", choices=("float32", "float64", "float16"),
                       help="the operands' dtype (float64/float16 where the device has them)")
    bench.add_argument("--repeat", type=positive_int, default=5,
                       help="most timed runs per peer (median)")
    bench.add_argument("--time-per-peer", type=positive_float, default=3.0, metavar="SECONDS",
                       help="seconds of timed runs per peer and layer before the run count is cut "
                            "(at least 2 runs)")
    bench.add_argument("--out", type=output_prefix, default="bench-out/bench", metavar="PREFIX",
                       help="output prefix for .txt/.csv/.json/.png ('-': print only; its last "
                            "folder is made if missing)")
    bench.add_argument("--json", type=json_path, default=None, metavar="PATH",
                       help="also write the results as JSON to PATH; '-' prints the JSON on "
                            "stdout and the report on stderr")
    bench.add_argument("--no-latency", action="store_true",
                       help="skip the first-call latency runs (fresh processes, cold and warm)")
    bench.add_argument("--first-use", action="store_true",
                       help="also time a whole network's first forward in a fresh process, cold "
                            "(empty clconv, PoCL and pyopencl caches) and warm: ResNet-18 and "
                            "MobileNetV2 at 224x224 through clconv.torch.convert (needs torch; "
                            "benchmarks.first_use, about a minute)")
    bench.add_argument("--no-gemm", action="store_true",
                       help="skip timing CLBlast's GEMM alone, tuned vs untuned (fresh processes)")
    bench.add_argument("--no-plot", action="store_true", help="no PNG chart")
    bench.add_argument("--no-progress", action="store_true", help="no progress bar")
    fair = bench.add_argument_group(
        "network layers (--layers; the fair method against torch CPU, which it needs)")
    fair.add_argument("--layers", type=network_list, default=None, metavar="NETS",
                      help="comma-separated built-in layer sets: resnet18, mobilenet_v2, "
                           "resnet50, efficientnet_b0, mobilenet_v3_small, densenet121, "
                           "convnext_t (the distinct convolutions at 224x224; "
                           "benchmarks/fair.py says what each leaves out), classic (the classic "
                           "table's six layers, each at its own batch size)")
    fair.add_argument("--batch", type=positive_int, default=1,
                      help="the layers' batch size (classic's layers keep their own)")
    fair.add_argument("--only", default=None, metavar="WORDS",
                      help="keep the layers whose name contains one of these comma-separated "
                           "words (e.g. dw,s2; default: every layer)")
    fair.add_argument("--algorithms", type=algorithm_list, default=["auto"], metavar="LIST",
                      help="clconv algorithms to time, comma-separated (default: auto)")
    fair.add_argument("--rounds", type=positive_int, default=5,
                      help="rounds of alternating blocks per layer (the median is over them)")
    fair.add_argument("--block", type=positive_int, default=5,
                      help="back-to-back calls per block")
    fair.add_argument("--pause", type=positive_float, default=0.02, metavar="SECONDS",
                      help="pause at each hand-over between torch and clconv")
    fair.add_argument("--torch-threads", type=positive_int, default=2,
                      help="torch's intra-op threads (OMP_NUM_THREADS of its process)")

    tune = command("tune", "search CLBlast's GEMM kernel parameters for a device and save them "
                           "(loaded on the device's first GEMM)")
    tune.add_argument("--device", type=device_spec, default=None, help=DEVICE_HELP)
    tune.add_argument("--budget", type=positive_float, default=600.0, metavar="SECONDS",
                      help="seconds to spend in CLBlast's tuners, all kernels and precisions "
                           "together")
    tune.add_argument("--precision", type=precision_list, default=None, metavar="LIST",
                      help="comma-separated CLBlast precisions: 32 (float32), 64, 16 (default: 32 "
                           "and whichever of 64/16 the device has)")
    tune.add_argument("--kernels", type=kernel_list, default=None, metavar="LIST",
                      help="comma-separated subset of Xgemm,XgemmDirect,Copy,Pad,Transpose,"
                           "Padtranspose,GemmRoutine (default: all of these; GemmRoutine, the "
                           "direct/tiled GEMM threshold, is timed in-process after the tuners, "
                           "outside the budget); Xconvgemm (CLBlast's convolution, a bench peer) "
                           "only when named")
    tune.add_argument("--show", action="store_true",
                      help="only print which tuning the device would load, and from where")
    tune.add_argument("--no-progress", action="store_true", help="no progress bar")

    cache = command("cache", "show (or --clear) what clconv keeps between runs: CLBlast tuning "
                             "and the algorithms 'auto' chose",
                    "Shows clconv's cache folder ($CLCONV_CACHE_DIR, else $XDG_CACHE_HOME/clconv "
                    "or ~/.cache/clconv) and its entries with their sizes.")
    cache.add_argument("--clear", action="store_true",
                       help="remove the tuning and 'auto' entries (clconv measures again on the "
                            "next run; the OpenCL driver's own kernel cache is left alone)")
    return parser


def _tune(args: argparse.Namespace) -> int:
    from ..blas import tuning
    from ..runtime.device import device

    dev = device(args.device)
    if args.show:
        entry, source = tuning.find_entry(dev)
        print(f"device: {dev.name} [{dev.platform_name}], driver {dev.driver_version}, CLBlast "
              f"{tuning.clblast_version()}")
        print(f"tuning: {source}" + ("" if tuning.enabled() else
                                     f" (but {tuning.ENV_VAR}=off disables loading)"))
        for precision, kernels in (entry or {}).get("parameters", {}).items():
            for kernel, params in kernels.items():
                values = " ".join(f"{k}={v}" for k, v in sorted(params.items()))
                print(f"  {kernel}/{precision}: {values}")
        return 0
    if not gemm.available():
        raise UnsupportedError(str(gemm.missing_reason()))  # main: a usage error of `tune`
    command = f"{prog_name()} " + " ".join(sys.argv[1:]) if sys.argv[1:] else None
    try:
        entry = tuning.tune(dev, args.budget, args.precision, args.kernels,
                            progress=not args.no_progress, command=command)
    except FileNotFoundError as err:  # CLBlast's tuners are not installed
        raise ValueError(str(err)) from None
    return 0 if entry["parameters"] or entry["measured"] else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    command = _COMMANDS[args.command]
    if extra:  # argparse would report them with the top-level usage: give the command's
        command.error(f"unrecognized arguments: {' '.join(extra)}")
    args.prog = parser.prog
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for the reports' command lines
    runners: dict[str, Callable[[], int]] = {
        "info": lambda: info(args.device),
        "demo": lambda: _demo(args),
        "tune": lambda: _tune(args),
        "bench": lambda: _bench(args),
        "cache": lambda: _cache(args),
    }
    try:
        return runners[args.command]()
    except BrokenPipeError:
        # The pipe's reader left (`clconv info | head -1`): no traceback (Python's own recipe:
        # stdout pointed at devnull, so that the interpreter's last flush does not raise again)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        # Ctrl-C: the command stops where it is, without a traceback, with the shell's status
        # for an interrupt (128 + SIGINT)
        print(f"{args.prog} {args.command}: interrupted", file=sys.stderr)
        return 130
    except (DeviceNotFoundError, UnsupportedError, ValueError) as err:
        # What the options could not check beforehand (what the device supports): a usage error
        # of the command, exit status 2, as argparse's own.
        command.error(str(err))
        return 2  # not reached: error() exits


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.device, args.repeat, layer=args.layer,
                    out=None if args.no_plot else args.out, progress=not args.no_progress)


def _benchmarks(name: str) -> Any:
    """benchmarks.<name>, imported when `bench` runs; UnsupportedError (a usage error of `bench`)
    where the benchmarks package is not importable."""
    import importlib

    try:
        return importlib.import_module(f"benchmarks.{name}")
    except ModuleNotFoundError as err:
        if err.name not in ("benchmarks", f"benchmarks.{name}"):
            raise  # a dependency of the benchmarks: its own error says what to install
        raise UnsupportedError(
            "`bench` needs the benchmarks package (the top-level benchmarks/ folder beside "
            "clconv/), which this installation lacks: run it from a clconv checkout (`make "
            "bench`), or install clconv from its source tree with `pip install .`") from None


#: bench's options that only one of its two modes reads: the fair method's layer sets
#: (--layers) and the classic bench (without it).
_FAIR_ONLY = ("batch", "only", "algorithms", "rounds", "block", "pause", "torch_threads")
_CLASSIC_ONLY = ("peers", "dtype", "repeat", "time_per_peer", "out", "json", "no_latency",
                 "first_use", "no_gemm", "no_plot", "no_progress")


def _bench(args: argparse.Namespace) -> int:
    if args.layers and args.layer:
        raise ValueError("--layers (a network's layer set) and --layer (your own) exclude each "
                         "other")
    # An option the chosen mode would not read is refused, not ignored (a --json with --layers
    # wrote nothing; --batch without it timed batch 1)
    parser = _COMMANDS["bench"]
    unread = [name for name in (_CLASSIC_ONLY if args.layers else _FAIR_ONLY)
              if getattr(args, name) != parser.get_default(name)]
    if unread:
        flags = ", ".join("--" + name.replace("_", "-") for name in unread)
        raise ValueError(f"{flags}: {'the classic bench' if args.layers else '--layers'}'s "
                         f"option{'s' if len(unread) > 1 else ''}, not read "
                         f"{'with --layers' if args.layers else 'without --layers'} "
                         f"(see clconv bench --help)")
    if args.layers:
        return _benchmarks("network_layers").run_from_cli(args)
    return _benchmarks("bench").main(args)


def _cache(args: argparse.Namespace) -> int:
    from .cache_cmd import run_cache

    return run_cache(clear=args.clear)
