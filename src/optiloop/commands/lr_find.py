"""``optiloop lr-find``: the LR range test on a config's data and model, with its plot."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import OptiloopError
from . import Command, command
from .common import add_task_arguments, keywords, task_flags


@command("lr-find")
class LRFindCommand(Command):
    help = "LR range test: sweep the LR up exponentially, plot the loss, suggest a learning rate"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--optimizer", help="optimizer name (default adamw, as optiloop train), with "
                       "its defaults from optiloop list except the LR; its keys: --set optimizer.KEY=VALUE")
        p.add_argument("--min-lr", type=float, default=1e-7, help="first LR (default 1e-7)")
        p.add_argument("--max-lr", type=float, default=10.0, help="last LR (default 10)")
        p.add_argument("--steps", type=int, default=100, help="steps of the sweep (default 100)")
        p.add_argument("--rule", choices=("valley", "steepest"), default="valley",
                       help="which suggestion to give: valley (default: middle of the longest "
                       "stretch of falling loss) or steepest (fastest fall per decade of LR)")
        p.add_argument("--seed", type=int, help="seed for the initial weights and data order "
                       "(default train.seed, 0)")
        where = p.add_mutually_exclusive_group()
        where.add_argument("--out", metavar="DIR", help="folder for lr_find.png and lr_find.csv "
                           "(default runs/lr-find-<data>-<model>-<optimizer>-<time>)")
        where.add_argument("--plot", metavar="FILE", help="write only the plot, here (.png)")
        add_task_arguments(p)

    def run(self, args: argparse.Namespace) -> int:
        from ..config import extras, resolve
        from ..distributed import resolve_device, seed_everything
        from ..lr_finder import lr_find
        from ..runs import RunFolder, build_task, ensure_empty, short, stamp, with_key

        if args.plot is not None and Path(args.plot).suffix.lower() != ".png":
            raise OptiloopError(f"--plot {args.plot}: the plot is a PNG; name it FILE.png")
        if args.plot is not None:
            from ..files import check_writable

            check_writable(args.plot, "--plot", file=True)
        flags = task_flags(args)
        flags["optimizer"] = {"name": args.optimizer}
        flags["train"]["seed"] = args.seed
        cfg = resolve(args.config, args.set, flags)
        o = cfg["optimizer"]
        if args.out is not None:
            ensure_empty(args.out, "--out")
        task = build_task(cfg)
        device = with_key("train.device", resolve_device, cfg["train"]["device"])
        seed_everything(cfg["train"]["seed"])
        model = task.new_model()
        options = extras(o, "lr")
        print(f"optiloop lr-find: {task.description}, {o['name']}"
              f"{' (' + keywords(o, 'lr') + ')' if options else ''}: lr {args.min_lr:g} -> "
              f"{args.max_lr:g} in {args.steps} steps, batch size {task.batch_size}", flush=True)
        result = lr_find(model, task.train_data, loss=task.loss, optimizer=o["name"],
                         min_lr=args.min_lr, max_lr=args.max_lr, steps=args.steps,
                         batch_size=task.batch_size, rule=args.rule, device=device,
                         seed=cfg["train"]["seed"], progress=lambda line: print(line), **options)
        # Everything computed; only now are files written.
        if args.plot is not None:
            plot = Path(args.plot)
        else:
            if args.out is not None:
                folder = RunFolder.create(args.out, unique=False)
            else:
                folder = RunFolder.create(Path("runs") / f"lr-find-{short(cfg['data']['name'])}-"
                                          f"{short(cfg['model']['name'])}-{o['name']}-{stamp()}", unique=True)
            # Held while the files are written: two lr-finds into one --out would mix their files.
            folder.lock(new=True, what="--out")
            plot = folder.path / "lr_find.png"
            result.to_csv(folder.path / "lr_find.csv")
        result.plot(plot, title=f"LR range test: {short(cfg['data']['name'])}, "
                    f"{cfg['model']['name']}, {o['name']}")
        if args.plot is None:
            folder.release()
        other = [f"{r} {lr:.2e}" for r, lr in result.suggestions.items() if r != result.rule]
        how = {"valley": "middle of the longest stretch of falling loss",
               "steepest": "fastest fall of the loss per decade of LR"}[result.rule]
        print(f"suggested lr: {result.suggestion:.2e} ({result.rule} rule: {how}; "
              f"other rule: {', '.join(other)})")
        print(f"plot: {plot}" + (f" (steps: {plot.parent / 'lr_find.csv'})" if args.plot is None
                                 else ""))
        return 0
