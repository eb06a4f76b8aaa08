"""Correct: optiloop's own fit() with a plateau schedule on the validation loss and checkpoints."""

import tempfile

from common import digits, mlp

import optiloop as ol

train_loader, val_loader = digits()
with tempfile.TemporaryDirectory() as run_dir:
    ol.fit(mlp(), train_loader, val_data=val_loader, optimizer={"name": "sgd", "momentum": 0.9}, lr=0.05,
           scheduler="plateau", epochs=3, progress=False, seed=0,
           callbacks=[ol.Checkpoint(run_dir, monitor="val_loss", every_seconds=0)])
