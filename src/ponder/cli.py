"""The ``ponder`` command: thin argument parsing over train, sweep, report and bench.

Bad input ends with one line on stderr and a non-zero exit status, never a traceback:
2 for a configuration or run directory a person must fix (another process writing it
included), 3 for a run that diverged, 4 for what the machine refused (a full disk, a
permission, memory), 1 for a sweep in which some runs did not finish, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from .config import ConfigError, RunConfig, from_dict, load_yaml, resolve, run_name
from .memory import keep_freed_memory
from .methods import METHODS, UnknownMethod, load_plugins

DESCRIPTION = (
    "Adaptive Computation Time and Repeat-RNN experiments: train one run, sweep a grid of runs, "
    "report a sweep, reproduce the paper's tables and figures, benchmark training speed."
)
EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_ENVIRONMENT = 4
EXIT_INTERRUPTED = 130

THREADS_HELP = (
    "CPU threads (default: one for networks too small for a second to pay, such as parity's; "
    "for larger ones as many as pay and are free now); with the same count a CPU run is "
    "bitwise repeatable"
)

# --flag -> task option: the task size options (integers), and parity's positions
TASK_FLAGS = {
    "bits": "parity: input bits (64)",
    "positions": "parity: which k positions are non-zero, first (Fojo et al.) | random",
    "numbers": "addition: numbers per sequence (5)",
    "digits": "addition: most digits per number (5)",
    "max_length": "logic: most tokens per sequence (10); sort: most numbers (15)",
    "min_length": "sort: fewest numbers (2)",
    "gates": "logic: most gates per token (10)",
}


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error and our exit status for bad input."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"ponder: error: {message}\n")


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    a = p.add_argument
    a("--config", type=Path, help="YAML file with any of the options below (flags win)")
    a("--task", help="parity | addition | logic | sort")
    a("--model", help=" | ".join(METHODS))
    a("--cell", help="rnn | gru | lstm (default: the paper's for the task)")
    a("--hidden", type=int, help="units of the recurrent layer")
    a("--tau", type=float, help="ACT's time penalty")
    a("--rho", type=int, help="Repeat-RNN's repeats per token")
    a("--lambda-p", type=float, help="PonderNet's geometric prior, in (0, 1) (default 0.2)")
    a("--beta", type=float, help="PonderNet's weight of KL(p || prior) (default 0.01)")
    a("--epsilon", type=float, help="ACT's halting threshold is 1 - epsilon")
    a("--max-ponder", type=int, help="ACT's most ponder steps per token M; PonderNet's N (20)")
    a("--halting-bias", type=float, help="initial halting-unit bias (ACT 1.0, PonderNet 0.0)")
    a("--init", help="tf (the authors' TensorFlow defaults) | torch (PyTorch's)")
    a("--ponder-loss", help="mean (authors' code) | sum (Graves) of the ponder cost over time")
    a("--batch-size", type=int)
    a("--lr", type=float)
    a("--steps", type=int, help="training steps (paper: 2,000,000)")
    a("--log-every", type=int, help="steps between logs (default 1000)")
    a("--checkpoint-every", type=int, help="log intervals between checkpoints")
    a("--eval-size", type=int, help="held-out sequences evaluated at every log")
    a("--solve-window", type=int, help="Savitzky-Golay window of the solve criterion (71)")
    a("--seed", type=int)
    a("--device", help="auto | cpu | cuda")
    a(
        "--tf32",
        action="store_const",
        const=True,
        default=None,
        help="TF32 matmuls on a CUDA GPU (opt-in; no effect on a CPU)",
    )
    a(
        "--no-cuda-graphs",
        dest="cuda_graphs",
        action="store_const",
        const=False,
        default=None,
        help="on a CUDA GPU, run every step eagerly instead of replaying CUDA graphs",
    )
    a(
        "--stop-when-solved",
        action="store_const",
        const=True,
        default=None,
        help="stop once the paper's criterion is met and can no longer move AND the held-out "
        "accuracy has reached the threshold (98%%)",
    )
    a("--no-progress", dest="progress", action="store_const", const=False, default=None)
    for name, doc in TASK_FLAGS.items():
        a(f"--{name.replace('_', '-')}", type=str if name == "positions" else int, help=doc)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Merge a YAML config (if any) with the flags given, and resolve it."""
    data = load_yaml(args.config) if args.config else {}
    given = data.get("task_options") or {}
    if not isinstance(given, dict):
        raise ConfigError(f"task_options must be a mapping of option: value, got {given!r}")
    options = dict(given)
    for name in TASK_FLAGS:
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    skip = {"config", "command", "out", "func", "threads", *TASK_FLAGS}
    for k, v in vars(args).items():
        if k not in skip and v is not None:
            data[k] = v
    if options:
        data["task_options"] = options
    return resolve(from_dict(data))


def _cmd_train(args: argparse.Namespace) -> int:
    from .training import threads, train

    config = config_from_args(args)
    out = args.out or Path("runs") / f"{config.task}-{run_name(config)}"
    print(f"ponder train: {config.task}, {config.model} ({config.cell}), -> {out}", flush=True)
    chosen = threads.use(threads.for_config(config, args.threads))
    print(f"threads: {chosen.threads} ({chosen.why})", flush=True)
    summary = train.run(config, out)
    _print_summary(summary, out)
    return EXIT_DIVERGED if summary.get("diverged") else 0


def _print_summary(summary: dict[str, Any], out: Path) -> None:
    from . import rundir

    if summary.get("diverged"):
        print(f"diverged (loss not finite near step {summary.get('diverged_near_step')})")
    solved = summary["solved"]
    stp = summary["steps_to_solve"]
    print(
        f"{'solved' if solved else 'not solved'}"
        + (f" at step {stp:,} (paper criterion)" if solved else "")
        + f"; held-out accuracy {_fmt(summary['final_eval_accuracy'])}"
        + f", ponder cost {_fmt(summary['ponder_cost'])}"
        + f", repetitions {_fmt(summary['repetitions'])} after {summary['step']:,} steps"
    )
    print(f"results in {out}/ ({rundir.SUMMARY}, {rundir.METRICS}, TensorBoard events)")


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _cmd_sweep(args: argparse.Namespace) -> int:
    from .experiments import sweep

    path = args.grid
    if not path.exists() and path.suffix == "" and path.name in sweep.builtin_grids():
        path = sweep.builtin_grid(path.name)
    overrides: dict[str, Any] = {"device": args.device} if args.device else {}
    if args.cuda_graphs is not None:
        overrides["cuda_graphs"] = args.cuda_graphs
    grid = sweep.load_grid(path, seeds=args.seeds, budget=args.budget, progress=False, **overrides)
    return sweep.run_sweep(grid, args.out, _executor(args), batch=args.batch)


def _executor(args: argparse.Namespace) -> Any:
    if args.executor == "ray":
        from .experiments.ray_executor import RayExecutor

        return RayExecutor(
            address=args.address,
            cpus_per_job=args.cpus_per_job,
            gpus_per_job=args.gpus_per_job,
            max_retries=args.retries,
        )
    from .experiments.sweep import LocalExecutor

    return LocalExecutor(jobs=args.jobs)


def _cmd_report(args: argparse.Namespace) -> int:
    from .analysis.report import build_report

    path = build_report(args.dir, say=lambda line: print(f"ponder report: {line}", file=sys.stderr))
    print(f"report: {path}")
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from .experiments.reproduce import reproduce

    return reproduce(
        args.what,
        args.out,
        quick=args.quick,
        seeds=args.seeds,
        budget=args.budget,
        executor=_executor(args),
        jobs=args.jobs,
        batch=args.batch,
        cuda_graphs=args.cuda_graphs,
        elements=args.elements,
    )


def _number(kind: type, lowest: float, above: bool = False) -> Any:
    """An argparse type: a finite ``kind`` >= ``lowest`` (> with ``above``); anything else is
    argparse's one-line error."""
    sign = ">" if above else ">="

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}") from None
        if not math.isfinite(value) or value < lowest or (above and value == lowest):
            raise argparse.ArgumentTypeError(f"must be {sign} {lowest:g}, got {text}")
        return value

    return parse


def _cmd_bench(args: argparse.Namespace) -> int:
    """Exit status 0, 1 when some case failed (the others were measured and written), 2 when
    nothing could start."""
    try:
        from .experiments.bench import run_bench
        from .rundir import RunError
        from .training import graphs

        got = run_bench(
            quick=args.quick,
            device=args.device,
            out=args.out,
            cuda_graphs=args.cuda_graphs,
            threads=args.threads,
        )
    except (RunError, graphs.RecordError) as e:
        print(f"ponder: error: {e}", file=sys.stderr)
        return 2
    return 1 if got.failed else 0


def _positive(text: str) -> int:
    """An argparse type: an integer >= 1 (anything else is argparse's one-line error)."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return int(text)


def _add_bench(sub) -> argparse.ArgumentParser:
    """Add the ``bench`` subcommand to an argparse subparsers object."""
    p = sub.add_parser(
        "bench",
        help="training throughput against a naive PyTorch reference",
        description="Time naive, single-run and ensemble training steps; write BENCHMARKS.md "
        "(after every case). A case that fails is one line with its reason and the others run; "
        "the exit status is then 1.",
    )
    p.add_argument("--quick", action="store_true", help="fewer steps; under 2 minutes on a CPU")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"), help="markdown to write")
    p.add_argument(
        "--no-cuda-graphs",
        dest="cuda_graphs",
        action="store_false",
        help="on a CUDA GPU, time every step eagerly instead of replaying CUDA graphs",
    )
    p.add_argument(
        "--threads",
        type=_positive,
        help="CPU threads for every case (default: each case's, chosen as ponder train does)",
    )
    p.set_defaults(func=_cmd_bench)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ponder", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train one run", description="Train one run.")
    _add_train_flags(p)
    p.add_argument("--threads", type=_number(int, 1), help=THREADS_HELP)
    p.add_argument(
        "--out",
        type=Path,
        help="run directory (default runs/TASK-NAME, NAME as a sweep names its runs: "
        "runs/parity-act-tau0.01-seed0)",
    )
    p.set_defaults(func=_cmd_train)

    def executor_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--jobs",
            type=_number(int, 1),
            default=os.cpu_count() or 1,
            help="jobs trained at once (default: one per CPU core)",
        )
        p.add_argument(
            "--batch",
            type=_number(int, 1),
            default=16,
            help="most runs of one shape trained as one batched ensemble (default 16; "
            "1 trains every run on its own)",
        )
        p.add_argument("--executor", choices=["local", "ray"], default="local")
        p.add_argument("--address", help="Ray cluster to join: auto, HOST:PORT or ray://...")
        p.add_argument(
            "--cpus-per-job",
            type=_number(float, 0, above=True),
            default=1.0,
            help="Ray: CPUs per job",
        )
        p.add_argument(
            "--gpus-per-job",
            type=_number(float, 0),
            default=0.0,
            help="Ray: GPUs per job, fractions share a GPU (e.g. 0.25)",
        )
        p.add_argument(
            "--retries",
            type=_number(int, -1),
            default=2,
            help="Ray: retries of a job whose worker died (default 2; -1: no limit)",
        )
        p.add_argument(
            "--no-cuda-graphs",
            dest="cuda_graphs",
            action="store_const",
            const=False,
            default=None,
            help="on a CUDA GPU, run every step eagerly instead of replaying CUDA graphs "
            "(every run; they resume as they are)",
        )

    p = sub.add_parser("sweep", help="run an experiment grid", description="Run a grid of runs.")
    p.add_argument("grid", type=Path, help="grid YAML file, or a built-in grid's name")
    p.add_argument("--out", type=Path, required=True, help="sweep directory")
    p.add_argument("--seeds", type=_number(int, 1), help="seeds per configuration (grid's, or 5)")
    p.add_argument(
        "--budget", type=_number(int, 1), help="training steps per run (grid's, or 2,000,000)"
    )
    p.add_argument("--device", help="auto | cpu | cuda for every run")
    executor_flags(p)
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser(
        "report",
        help="tables and figures of a sweep directory",
        description="Write report.md (the paper's tables beside ours), report.csv and figures/ "
        "in a sweep directory, from the runs there, finished or not.",
    )
    p.add_argument("dir", type=Path, help="sweep directory (ponder sweep's or reproduce's --out)")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser(
        "reproduce",
        help="the paper's tables and figures in one command",
        description="Sweep the paper's experiments and write their report. With `all`, each "
        "task goes to its own directory, OUT/parity and OUT/addition.",
    )
    p.add_argument(
        "what",
        choices=["parity", "addition", "all", "pondernet", "extrapolation", "parity-figures"],
        help="the Fojo paper's tables (parity, addition, all); pondernet: PonderNet beside "
        "ACT and Repeat on 64-bit parity (grid parity-pondernet, 3 seeds); extrapolation: "
        "every method on parity at random positions (16 elements, or --elements N), trained "
        "on 1 to N/2 non-zero and tested on N/2+1 to N too, with the equal-cost comparison "
        "(grid parity-extrapolation, 5 seeds); parity-figures: the paper's Figures 5 and 6 "
        "(grids parity-tau and parity-rho, 3 seeds, 200,000 steps, no stop once solved)",
    )
    p.add_argument("--out", type=Path, required=True, help="sweep directory")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a reduced experiment (parity: 2 to 4 minutes on 2 CPU cores; extrapolation: "
        "under 10; addition: about 70)",
    )
    p.add_argument(
        "--seeds",
        type=_number(int, 1),
        help="seeds per configuration (default 5, parity-figures 3; not --quick)",
    )
    p.add_argument(
        "--budget",
        type=_number(int, 1),
        help="training steps per run (default: the paper's 2,000,000, parity-figures 200,000; "
        "not --quick); the "
        "report says which of the paper's results a smaller budget cannot reproduce",
    )
    p.add_argument(
        "--elements",
        type=_number(int, 2),
        help="extrapolation only: parity elements N (default 16; PonderNet's protocol is 96), "
        "trained on 1 to N/2 non-zero, extrapolation set N/2+1 to N",
    )
    executor_flags(p)
    p.set_defaults(func=_cmd_reproduce)

    _add_bench(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .rundir import RunError
    from .training.graphs import RecordError

    try:  # methods of the user's own, before the parser lists the known ones
        load_plugins()
    except UnknownMethod as e:
        print(f"ponder: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a usage error already printed on one line
        return int(e.code or 0)
    keep_freed_memory()  # a training process reuses its large blocks (memory.py)
    # `kill PID` stops a run or a sweep as Ctrl-C does: workers ended, runs resumable. (A job
    # started in the background with `&` ignores SIGINT, so SIGTERM is how one stops it.)
    main_thread = threading.current_thread() is threading.main_thread()  # signals need it
    previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None
    try:
        return args.func(args)
    except (ConfigError, RunError, RecordError, UnknownMethod) as e:
        print(f"ponder: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as e:  # the machine refused: a full disk, a permission, a read-only mount
        where = f": {e.filename}" if e.filename else ""
        print(f"ponder: error: {e.strerror or e}{where}", file=sys.stderr)
        return EXIT_ENVIRONMENT
    except (MemoryError, RuntimeError) as e:
        if not _out_of_memory(e):
            raise
        print(f"ponder: error: out of memory: {_first_line(e)}", file=sys.stderr)
        return EXIT_ENVIRONMENT
    except KeyboardInterrupt:
        print("ponder: interrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is an allocation that failed (CPU or GPU), not a bug of ours."""
    import torch

    if isinstance(e, MemoryError | torch.OutOfMemoryError):
        return True
    text = str(e)
    return "can't allocate memory" in text or "out of memory" in text


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
