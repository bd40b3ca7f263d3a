"""`latent train | eval | data | inspect | demo`: the command line."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from .config import ConfigError


def _keys_help() -> str:
    """Every configurable key with its default, grouped by owner (for `latent train --help`)."""
    from . import methods
    from .run import DataConfig
    from .trainer import TrainConfig

    lines = ["keys (key=value on the command line or in --config YAML; task.NAME=VALUE sets a task option):"]
    for title, cls in [("data", DataConfig), ("trainer", TrainConfig)] + [
        (f"method {name}", methods.get(name).Config) for name in methods.names()
    ]:
        defaults = cls()
        lines.append(f"  {title}: " + ", ".join(f"{k}={getattr(defaults, k)!r}" for k in cls.keys()))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    from . import inspect_thoughts, methods, tasks

    parser = argparse.ArgumentParser(prog="latent", description="Train and evaluate latent-reasoning language models.")
    commands = parser.add_subparsers(dest="command", required=True)
    formatter = argparse.RawDescriptionHelpFormatter

    train = commands.add_parser("train", help="train a method on a task", epilog=_keys_help(), formatter_class=formatter)
    train.add_argument("--method", help=f"one of {methods.names()} (default: from --config)")
    train.add_argument("--task", help=f"one of {tasks.names()} (default: from --config)")
    train.add_argument("--model", help="tiny-1m, tiny-5m, tiny-20m, tiny-gpt2, smollm2-135m-instruct, a hub id or a folder "
                                       "(default: from --config)")
    train.add_argument("--config", help="YAML recipe (flat keys); command-line keys override it (default: none)")
    train.add_argument("--out", required=True, help="run folder: checkpoint/, TensorBoard logs, eval/")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint "
                                                             "(default: off)")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="config keys (listed below)")

    evaluate = commands.add_parser("eval", help="evaluate a checkpoint or an untrained model", formatter_class=formatter,
                                   epilog="key=value overrides change the method's answering config, "
                                          "e.g. decoding=self-consistency samples=8 max_new_tokens=64")
    source = evaluate.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a checkpoint folder (run/checkpoint)")
    source.add_argument("--model", help="instead of a checkpoint, a model as it is (e.g. smollm2-135m-instruct or a "
                                        "hub id): the base model of a comparison; needs --task")
    evaluate.add_argument("--method", default="cot", help="with --model: the method whose answering is used, e.g. "
                                                          "latro to read the answer after its stop string (default: cot)")
    evaluate.add_argument("--task", help="task to score on (default: the checkpoint's task)")
    evaluate.add_argument("--data", help="file or folder to read examples from (default: the hub, or generated "
                                         "examples with --seed for generated tasks)")
    evaluate.add_argument("--split", default="test", help="split to score (default: test)")
    evaluate.add_argument("--limit", type=int, help="score only the first N examples (default: all)")
    evaluate.add_argument("--batch-size", type=int, default=64, help="examples answered together (default: 64)")
    evaluate.add_argument("--seed", type=int, default=1, help="seed for sampling and generated data (default: 1)")
    evaluate.add_argument("--sweep", help="key=v1,v2,...: evaluate once per value, e.g. eval_thoughts=0,2,4,6 for "
                                          "accuracy against the number of thoughts (default: none)")
    evaluate.add_argument("--out", required=True, help="folder for predictions.jsonl and summary.json")
    evaluate.add_argument("overrides", nargs="*", metavar="key=value", help="method answering options")

    data = commands.add_parser("data", help="generate or check task data")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    generate = data_commands.add_parser("generate", help="write generated examples in the task's file format")
    generate.add_argument("task", help="a generated task: multiplication, parity, graph, prosqa or prontoqa")
    generate.add_argument("--n", type=int, required=True, help="number of examples")
    generate.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    generate.add_argument("--digits", type=int, default=4, help="multiplication operand digits (default: 4)")
    generate.add_argument("--out", required=True, help="output file")
    # A flag rather than train's bare task.KEY=VALUE: argparse rejects positionals after --n/--out here.
    generate.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                          help="a task option, repeatable, e.g. --option hops=4 --option nodes=24 (default: none)")
    check = data_commands.add_parser("check", help="load a file with a task's loader and report counts")
    check.add_argument("task", help=f"one of {tasks.names()}")
    check.add_argument("path", help="file or folder")
    check.add_argument("--split", default="test", help="split, when path is a folder (default: test)")
    check.add_argument("--skip-bad", action="store_true", help="count and report bad records instead of "
                                                               "stopping at the first (default: off)")

    inspect = commands.add_parser("inspect", help="what a coconut/slr checkpoint's continuous thoughts decode to")
    inspect_thoughts.add_arguments(inspect)

    demo = commands.add_parser("demo", help="the main job: generate a task, train every method, compare them")
    demo.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    demo.add_argument("--quick", action="store_true", help="the under-2-minute version used in CI (default: off)")
    demo.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        commands = {"train": cmd_train, "eval": cmd_eval, "data": cmd_data, "demo": cmd_demo, "inspect": cmd_inspect}
        return commands[args.command](args)
    except (ConfigError, FileNotFoundError, ValueError) as error:
        if os.environ.get("LATENT_DEBUG"):
            raise
        print(f"latent {args.command}: error: {error}", file=sys.stderr)
        return 2


def cmd_train(args) -> int:
    from .run import make_run, parse_overrides, read_recipe, train

    values = read_recipe(args.config)
    values.update({key: getattr(args, key) for key in ("method", "task", "model") if getattr(args, key)})
    overrides = parse_overrides(args.overrides)
    if "task_options" in overrides:
        values["task_options"] = {**(values.get("task_options") or {}), **overrides.pop("task_options")}
    values.update(overrides)
    run = make_run(values)
    method, history = train(run, args.out, resume=args.resume)
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
    examples = load_examples(task, args.data, args.split, args.limit or 1000, args.seed)[: args.limit]
    method = build_method(run, weights=found)
    method.task = task
    trained = method.config.to_dict()
    summaries = []
    for value in sweep_values:
        answering = {**overrides, **({sweep_key: value} if sweep_key else {})}
        method.config = type(method.config)(**{**trained, **answering})
        torch.manual_seed(args.seed)
        described = {"task": task.name, "split": args.split if args.data else f"generated(seed={args.seed})",
                     "method": run.method, "model": run.model, "seed": run.train.seed,
                     "command": shlex.join(["latent", *sys.argv[1:]])}
        out = Path(args.out) / f"{sweep_key}={value}" if sweep_key else Path(args.out)
        summary = evaluate(method, examples, batch_size=args.batch_size, out=out, run=described, progress=True)
        summary.update(answering)
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
        examples = task.generate(args.n, seed=args.seed)
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

    run_demo(Path(args.out), quick=args.quick, seed=args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
