"""A fit(out=...) process for tests/test_fit_out.py to kill and resume (not a test module itself).

usage: python fit_out_worker.py RUN_DIR OUT_FILE [--resume]
Trains into the run folder RUN_DIR (or continues it with --resume); prints "STEP k" after every
optimizer step (after any checkpoint of that step), then saves the final weights and history to
OUT_FILE.
"""

import argparse

import torch

import optiloop as ol


class Announce(ol.Callback):
    order = 200  # after Checkpoint: when "STEP k" is printed, a checkpoint due at step k exists

    def on_step_end(self, state, logs):
        print(f"STEP {state.step}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("run_dir")
    p.add_argument("out")
    p.add_argument("--resume", action="store_true")
    a = p.parse_args()
    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 8, generator=g)
    y = (X[:, 0] > 0).long() + (X[:, 1] > 0).long()
    torch.manual_seed(0)
    # Dropout: the result depends on the torch RNG, so its state must come back exactly.
    model = ol.make_model("optiloop.models:mlp", in_features=8, out_features=3, hidden=[32], dropout=0.2)
    where = {"resume": a.run_dir} if a.resume else {"out": a.run_dir}
    history = ol.fit(model, (X[:150], y[:150]), val_data=(X[150:], y[150:]), batch_size=16, optimizer="adamw",
                     lr=1e-2, scheduler={"name": "cosine", "warmup_steps": 5}, epochs=5, metrics=["accuracy"],
                     seed=0, progress=False,
                     callbacks=[ol.Checkpoint(a.run_dir, every_n_steps=4, every_seconds=0), Announce()], **where)
    rows = [{k: v for k, v in r.items() if k != "seconds"} for r in history]
    torch.save({"model": model.state_dict(), "history": rows}, a.out)


if __name__ == "__main__":
    main()
