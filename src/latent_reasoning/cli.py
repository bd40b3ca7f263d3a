"""`latent train | eval | data | inspect | demo`: the command line.

Only argparse and the name registries are imported up front, so `latent --help` answers at once;
each command imports what it needs (torch, transformers) when it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import signal
import sys
from pathlib import Path

from .config import ConfigError
from .tasks import DataError

# What a user can get wrong (a key, a value, a file, the network); these end in one line and exit 2.
USER_ERRORS = (ConfigError, DataError, FileNotFoundError, ConnectionError, ValueError)


def _keys_help() -> str:
    """Every configurable key with its default, grouped by owner (for `latent train --help`)."""
    from . import methods
    from .run import DataConfig
    from .trainer import TrainConfig

    lines = ["keys (key=value anywhere on the command line, or in --config YAML; task.NAME=VALUE sets a task "
             "option; relative paths in a recipe are relative to the recipe's folder):"]
    for title, cls in [("data", DataConfig), ("trainer", TrainConfig)] + [
        (f"method {name}", methods.get(name).Config) for name in methods.names()
    ]:
        defaults = cls()
        lines.append(f"  {title}: " + ", ".join(f"{k}={getattr(defaults, k)!r}" for k in cls.keys()))
    return "\n".join(lines)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose epilog may be a function, called only when the help is shown
    (train's list of keys imports every method, and torch with them)."""

    def format_help(self) -> str:
        if callable(self.epilog):
            self.epilog = self.epilog()
        return super().format_help()

    def error(self, message: str):
        """One line, as every other user error (argparse would print the whole usage first)."""
        self.exit(2, f"{self.prog}: error: {message} (--help lists the options)\n")


def whole_number(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"expected {least} or more, got {text!r}")
    return value


def count(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    return whole_number(text, 1)


def seed(text: str) -> int:
    """An argparse type: a whole number of 0 or more (numpy refuses negative seeds)."""
    return whole_number(text, 0)


def build_parser() -> argparse.ArgumentParser:
    from . import methods, tasks

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the full traceback of an error (default: off)")

    parser = Parser(prog="latent", description="Train and evaluate latent-reasoning language models.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    formatter = argparse.RawDescriptionHelpFormatter

    train = commands.add_parser("train", help="train a method on a task", epilog=_keys_help, formatter_class=formatter,
                                parents=[common])
    train.add_argument("--method", help=f"one of {methods.names()} (default: from --config)")
    train.add_argument("--task", help=f"one of {tasks.names()} (default: from --config)")
    train.add_argument("--model", help="tiny-1m, tiny-5m, tiny-20m, tiny-gpt2, tiny-gpt2-2l, smollm2-135m-instruct, a hub id "
                                       "or a folder (default: from --config; to start from a checkpoint use init_from=)")
    train.add_argument("--config", help="YAML recipe (flat keys); command-line keys override it (default: none)")
    train.add_argument("--out", required=True, help="run folder: checkpoint/ and the TensorBoard logs (train/)")
    again = train.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint, with "
                                                             "the keys in its config.yaml (default: off)")
    again.add_argument("--overwrite", action="store_true", help="start over in an --out that holds a run, removing "
                                                                "its checkpoint and logs (default: off)")
    train.add_argument("--skip-bad", action="store_true", help="leave out (and count) data records that cannot be "
                                                               "read instead of stopping (default: off)")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="config keys (listed below)")

    evaluate = commands.add_parser("eval", help="evaluate a checkpoint or an untrained model", formatter_class=formatter,
                                   parents=[common],
                                   epilog="key=value overrides change the method's answering config, "
                                          "e.g. decoding=self-consistency samples=8 max_new_tokens=64")
    source = evaluate.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a run folder (the --out of latent train) or its checkpoint/")
    source.add_argument("--model", help="instead of a checkpoint, a model as it is (e.g. smollm2-135m-instruct or a "
                                        "hub id): the base model of a comparison; needs --task")
    evaluate.add_argument("--method", default="cot", help="with --model: the method whose answering is used, e.g. "
                                                          "latro to read the answer after its stop string (default: cot)")
    evaluate.add_argument("--task", help="task to score on (default: the checkpoint's task)")
    evaluate.add_argument("--data", help="file or folder to read examples from (default: the hub, or generated "
                                         "examples with --seed for generated tasks)")
    evaluate.add_argument("--split", default="test", help="split to score (default: test)")
    evaluate.add_argument("--limit", type=count, help="score only the first N examples (default: all)")
    evaluate.add_argument("--batch-size", type=count, default=64, help="examples answered together (default: 64)")
    evaluate.add_argument("--seed", type=seed, default=1, help="seed for sampling and generated data, recorded as "
                                                               "eval_seed in summary.json (default: 1)")
    evaluate.add_argument("--sweep", help="key=v1,v2,...: evaluate once per value, e.g. eval_thoughts=0,2,4,6 for "
                                          "accuracy against the number of thoughts (default: none)")
    evaluate.add_argument("--skip-bad", action="store_true", help="leave out (and count) data records that cannot "
                                                                  "be read instead of stopping (default: off)")
    evaluate.add_argument("--out", required=True, help="folder for predictions.jsonl and summary.json")
    evaluate.add_argument("overrides", nargs="*", metavar="key=value", help="method answering options")

    data = commands.add_parser("data", help="generate or check task data")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    generate = data_commands.add_parser("generate", help="write generated examples in the task's file format",
                                        parents=[common])
    generate.add_argument("task", help="a generated task: multiplication, parity, arithmetic, graph, prosqa or prontoqa")
    generate.add_argument("--n", type=count, required=True, help="number of examples")
    generate.add_argument("--seed", type=seed, default=0, help="random seed (default: 0)")
    generate.add_argument("--digits", type=count, default=4, help="multiplication operand digits (default: 4)")
    generate.add_argument("--out", required=True, help="output file")
    generate.add_argument("--exclude", action="append", default=[], metavar="FILE",
                          help="a file of the same task whose questions are never generated (e.g. the training set, "
                               "for a held-out one), repeatable (default: none)")
    # A flag rather than train's bare task.KEY=VALUE: argparse rejects positionals after --n/--out here.
    generate.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                          help="a task option, repeatable, e.g. --option hops=4 --option nodes=24 (default: none)")
    check = data_commands.add_parser("check", help="load a file with a task's loader and report counts",
                                     parents=[common])
    check.add_argument("task", help=f"one of {tasks.names()}")
    check.add_argument("path", help="file or folder")
    check.add_argument("--split", default="test", help="split, when path is a folder (default: test)")
    check.add_argument("--skip-bad", action="store_true", help="count and report bad records instead of "
                                                               "stopping at the first (default: off)")

    inspect = commands.add_parser("inspect", help="what a coconut/slr checkpoint's continuous thoughts decode to; "
                                                  "for slr loop=depth, each token's core iterations and convergence",
                                  parents=[common])
    inspect.add_argument("--checkpoint", required=True, help="a coconut or slr run folder (the --out of latent train) "
                                                             "or its checkpoint/")
    inspect.add_argument("--data", help="file or folder to read questions from (default: generated with --seed for "
                                        "generated tasks, else the hub)")
    inspect.add_argument("--split", default="valid", help="split to read (default: valid)")
    inspect.add_argument("--limit", type=count, default=3, help="questions to inspect (default: 3)")
    inspect.add_argument("--seed", type=seed, default=1, help="seed for generated questions (default: 1)")
    inspect.add_argument("--top-k", type=count, default=5, help="tokens shown per continuous thought (default: 5)")
    inspect.add_argument("--png", help="also plot thought norms and similarities (loop=depth: the state's change per "
                                       "iteration and iterations per token) to this PNG (default: none)")
    inspect.add_argument("overrides", nargs="*", metavar="key=value",
                         help="method answering options, e.g. eval_thoughts=4 halting=none, or "
                              "eval_loops=8 halt_on=change halt_threshold=0.05")

    demo = commands.add_parser("demo", help="the main job: generate a task, train every method, compare them",
                               parents=[common])
    demo.add_argument("--out", default="runs/demo", help="output folder, replaced if it holds an earlier demo "
                                                         "(default: runs/demo)")
    demo.add_argument("--quick", action="store_true", help="the under-2-minute version used in CI (default: off)")
    demo.add_argument("--seed", type=seed, default=0, help="seed (default: 0)")
    demo.add_argument("--task", choices=["parity", "multiplication"], default="parity",
                      help="parity: 16 bits, where coconut matches CoT; multiplication: 2x2, where it does not "
                           "(default: parity)")
    return parser


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line; key=value overrides may stand anywhere, before or after options."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    keys = [token for token in rest if "=" in token and not token.startswith("-")]
    unknown = [token for token in rest if token not in keys]
    if unknown or (keys and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or keys)}")
    if keys:  # argparse gives one run of positionals to `overrides` and leaves later runs over: keep their order
        given = set(args.overrides) | set(keys)
        args.overrides = [token for token in (sys.argv[1:] if argv is None else argv) if token in given]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    commands = {"train": cmd_train, "eval": cmd_eval, "data": cmd_data, "demo": cmd_demo, "inspect": cmd_inspect}
    try:
        return commands[args.command](args)
    except USER_ERRORS as error:
        if args.debug:
            raise
        print(f"latent {args.command}: error: {' '.join(str(error).split())} (--debug shows the traceback)",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"latent {args.command}: interrupted", file=sys.stderr)
        return 130


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: stopped as Ctrl-C stops training, keeping the steps done since the last checkpoint."""


@contextlib.contextmanager
def terminate_as_interrupt():
    """Within `with`, SIGTERM (a scheduler's or `kill`'s stop; a job started in the background by a shell ignores
    Ctrl-C's SIGINT) raises Terminated, so the trainer saves before the process ends."""

    def stop(signum, frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def cmd_train(args) -> int:
    from . import checkpoint
    from .run import make_run, parse_overrides, read_recipe, resume_values, train

    values = read_recipe(args.config)
    values.update({key: getattr(args, key) for key in ("method", "task", "model") if getattr(args, key)})
    overrides = parse_overrides(args.overrides)
    if "task_options" in overrides:
        values["task_options"] = {**(values.get("task_options") or {}), **overrides.pop("task_options")}
    values.update(overrides)
    if args.resume:
        values = resume_values(args.out, values)
    run = make_run(values)
    try:
        with terminate_as_interrupt():
            method, history = train(run, args.out, resume=args.resume, overwrite=args.overwrite, skip_bad=args.skip_bad)
    except KeyboardInterrupt as stop:
        if args.debug:
            raise
        saved = checkpoint.find(Path(args.out) / "checkpoint")
        print(f"latent train: {'terminated' if isinstance(stop, Terminated) else 'interrupted'}; "
              f"{f'checkpoint: {saved} (--resume continues)' if saved else 'no checkpoint'}", file=sys.stderr)
        return 128 + signal.SIGTERM if isinstance(stop, Terminated) else 130
    final = history[-1] if history else {}
    print(json.dumps({k: v for k, v in final.items()}, indent=1))
    print(f"checkpoint: {Path(args.out) / 'checkpoint'}")
    return 0


def cmd_eval(args) -> int:
    import torch

    from . import tasks
    from .evaluate import evaluate
    from .run import build_method, check_answering_keys, find_run, load_examples, make_run, parse_overrides

    overrides = parse_overrides(args.overrides)
    if args.checkpoint:
        found, run = find_run(args.checkpoint)
    elif not args.task:
        raise ConfigError("--model needs --task: an untrained model has no task of its own")
    else:
        task_options = overrides.pop("task_options", {})  # task.digits=2: options of the task scored on
        found, run = None, make_run({"method": args.method, "task": args.task, "model": args.model,
                                     "task_options": task_options})
    sweep_key, sweep_values = None, [None]
    if args.sweep:
        sweep_key, _, listed = args.sweep.partition("=")
        sweep_values = [value for value in listed.split(",") if value]
        if not sweep_values:
            raise ConfigError(f"--sweep {args.sweep!r}: expected key=value1,value2,...")
    check_answering_keys(run, list(overrides) + ([sweep_key] if sweep_key else []))
    same_task = not args.task or args.task == run.task
    task = tasks.get(args.task or run.task, **(run.task_options if same_task else {}))
    trained = run.method_config.to_dict()
    configs = []  # every answering config is checked before any model is loaded
    for value in sweep_values:
        answering = {**overrides, **({sweep_key: value} if sweep_key else {})}
        configs.append((value, answering, type(run.method_config)(**{**trained, **answering})))
    examples = load_examples(task, args.data, args.split, args.limit or 1000, args.seed,
                             skip_bad=args.skip_bad)[: args.limit]
    method = build_method(run, weights=found)
    method.task = task
    summaries = []
    for value, answering, config in configs:
        method.config = config
        torch.manual_seed(args.seed)
        described = {"task": task.name, "split": args.split if args.data else f"generated(seed={args.seed})",
                     "method": run.method, "model": run.model_label, "seed": run.train.seed,
                     "command": shlex.join(["latent", *sys.argv[1:]])}
        out = Path(args.out) / f"{sweep_key}={value}" if sweep_key else Path(args.out)
        summary = evaluate(method, examples, batch_size=args.batch_size, out=out, run=described, progress=True)
        summary["eval_seed"] = args.seed
        summary.update({key: getattr(config, key) for key in answering})  # typed values, not command-line text
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        summaries.append(summary)
        print(json.dumps(summary, indent=1))
    if sweep_key:
        from . import report

        rows = [{**row, "method": f"{run.method} {sweep_key}={row[sweep_key]}"} for row in summaries]
        print(report.write(rows, args.out, f"{run.method} on {task.name}: accuracy against {sweep_key}"))
    return 0


def cmd_data(args) -> int:
    from . import tasks

    if args.data_command == "generate":
        import yaml

        options = {"digits": args.digits} if args.task == "multiplication" else {}
        for pair in args.option:
            key, equals, value = pair.partition("=")
            if not equals:
                raise ConfigError(f"--option {pair!r}: expected KEY=VALUE, e.g. --option hops=4")
            options[key.removeprefix("task.")] = yaml.safe_load(value)  # as train's task.KEY=VALUE
        try:
            task = tasks.get(args.task, **options)
        except TypeError as error:
            raise ConfigError(f"task options {options} for task {args.task!r}: {error}") from None
        exclude = {example.question for path in args.exclude for example in task.load(path=path)}
        examples = task.generate(args.n, seed=args.seed, exclude=exclude)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        task.save(examples, args.out)
        print(f"wrote {len(examples)} {args.task} examples to {args.out}")
    else:
        task = tasks.get(args.task)
        examples = task.load(split=args.split, path=args.path, skip_bad=args.skip_bad)
        print(f"{args.path}: {len(examples)} {args.task} examples")
    return 0


def cmd_inspect(args) -> int:
    from .inspect_thoughts import run

    return run(args) or 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(Path(args.out), quick=args.quick, seed=args.seed, task_name=args.task)
    return 0


if __name__ == "__main__":
    sys.exit(main())
