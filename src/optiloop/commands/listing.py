"""``optiloop list``: every name a config can use, with the defaults the command line starts from.

It reads the records of ``optiloop.optim``, ``optiloop.schedules``, ``optiloop.datasets`` and
``optiloop.models`` and imports no torch (``--torch-defaults`` does, to ask torch).
"""

from __future__ import annotations

import argparse

from ..formatting import fmt
from . import Command, command


@command("list")
class ListCommand(Command):
    help = "list optimizers (with their defaults), schedulers, data sets, models, and fit()'s defaults beside train's"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--torch-defaults", action="store_true",
                       help="also show every keyword each optimizer's torch class takes, with "
                       "torch's own default (imports torch)")

    def run(self, args: argparse.Namespace) -> int:
        from ..datasets import describe_builtin
        from ..defaults import format_table
        from ..models import DESCRIPTIONS
        from ..optim import OPTIMIZERS, optimizer_defaults
        from ..schedules import SCHEDULERS, describe

        print("optimizers (the defaults train, compare and lr-find start from; any torch keyword: "
              "--set optimizer.KEY=VALUE)")
        width = max(len(", ".join(f"{k}={fmt(v)}" for k, v in o.defaults.items())) for o in OPTIMIZERS.values())
        names = max(16, *(len(n) + 2 for n in OPTIMIZERS))
        for name, info in OPTIMIZERS.items():
            defaults = ", ".join(f"{k}={fmt(v)}" for k, v in info.defaults.items())
            print(f"  {name:<{names}}{defaults:<{width}}  {info.module}.{info.torch_class}: {info.description}"
                  + (f" (pip install 'optiloop[{info.extra}]')" if info.extra else ""))
            if args.torch_defaults:
                torch_side = ", ".join(f"{k}={fmt(v)}" for k, v in optimizer_defaults(name).items())
                print(f"  {'':<{names}}torch's defaults: {torch_side}")
        print("\nschedulers (interval: when it is stepped; warmup: scheduler.warmup_epochs=N)")
        for name in SCHEDULERS:
            print(f"  {name:<16}{describe(name)}")
        print("\ndata sets (data.name; also a .csv file + data.target, an .npz with X and y, or "
              "package.module:function returning (X, y))")
        for name, text in describe_builtin().items():
            print(f"  {name:<16}{text}")
        print("\nmodels (model.name; also package.module:function(in_features, out_features, "
              "**keys of [model]))")
        for name, text in DESCRIPTIONS.items():
            print(f"  {name:<16}{text}")
        print("\ndefaults of the two doors: ol.fit() and optiloop train")
        print(format_table())
        return 0
