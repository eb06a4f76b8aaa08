"""A GAN on scikit-learn's two moons with two optimizers: optiloop's several-optimizer coupling.

The generator maps noise to points in the plane; the discriminator tells real points from
generated ones. Each has its own optimizer and its own scheduler at its own interval:

    optimizer={"generator":     {"name": "adam", ..., "scheduler": {"name": "step", ...}},   # per epoch
               "discriminator": {"name": "adam", ..., "scheduler": {"name": "exponential",
                                                                    "interval": "step", ...}}}  # per step

The step is manual (``ol.manual``, Lightning's manual optimization): the classic alternating
update, the discriminator first, then the generator against the updated discriminator. The loop
steps both schedulers, keeps both optimizers in every checkpoint (resume is exact), and records
the step's own values: each part's loss and, in validation, how far generated points fall from
the nearest real one and back (``val_gap``).

Run: ``python examples/gan.py`` (about a minute on a CPU).
"""

from __future__ import annotations

import argparse

import torch
from sklearn.datasets import make_moons
from torch import nn
from torch.nn import functional as F

import optiloop as ol


class GAN(nn.Module):
    def __init__(self, noise: int = 2, hidden: int = 64):
        super().__init__()
        self.noise = noise
        self.generator = nn.Sequential(nn.Linear(noise, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden),
                                       nn.LeakyReLU(0.2), nn.Linear(hidden, 2))
        self.discriminator = nn.Sequential(nn.Linear(2, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden),
                                           nn.LeakyReLU(0.2), nn.Linear(hidden, 1))

    def sample(self, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
        return self.generator(torch.randn(n, self.noise, device=device))


def moons(n: int, seed: int) -> torch.Tensor:
    X, _ = make_moons(n_samples=n, noise=0.05, random_state=seed)
    return torch.tensor(X, dtype=torch.float32)


def _real(batch) -> torch.Tensor:
    return batch["real"] if isinstance(batch, dict) else batch[0]


def gan_step(model: GAN, batch, opt) -> dict[str, torch.Tensor]:
    """One alternating update: the discriminator on real vs. generated points, then the generator
    to fool the discriminator as it is now."""
    real = _real(batch)
    ones, zeros = torch.ones(len(real), 1, device=real.device), torch.zeros(len(real), 1, device=real.device)
    fake = model.sample(len(real), real.device)
    d_loss = (F.binary_cross_entropy_with_logits(model.discriminator(real), ones)
              + F.binary_cross_entropy_with_logits(model.discriminator(fake.detach()), zeros))
    opt["discriminator"].zero_grad()
    d_loss.backward()
    opt["discriminator"].step()
    g_loss = F.binary_cross_entropy_with_logits(model.discriminator(fake), ones)
    opt["generator"].zero_grad()
    g_loss.backward()
    opt["generator"].step()
    return {"generator": g_loss.detach(), "discriminator": d_loss.detach()}


def eval_step(model: GAN, batch) -> ol.StepOutput:
    """Both losses on held-out points, and how far the generated points are from the moons: the
    mean distance from each generated point to its nearest real one plus from each real point to
    its nearest generated one (a Chamfer distance: a generator that puts every point in one spot
    near the data still scores badly)."""
    real = _real(batch)
    fake = model.sample(len(real), real.device)
    real_logits, fake_logits = model.discriminator(real), model.discriminator(fake)
    d_loss = (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
              + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))
    g_loss = F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
    dist = torch.cdist(fake, real)
    gap = dist.min(dim=1).values.mean() + dist.min(dim=0).values.mean()
    return ol.StepOutput({"generator": g_loss, "discriminator": d_loss}, logs={"gap": gap})


def optimizers(lr: float = 2e-3) -> dict:
    return {
        "generator": {"name": "adam", "lr": lr, "betas": (0.5, 0.999),
                      "scheduler": {"name": "step", "step_size": 10, "gamma": 0.5}},
        "discriminator": {"name": "adam", "lr": lr, "betas": (0.5, 0.999),
                          "scheduler": {"name": "exponential", "interval": "step", "gamma": 0.999}},
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--samples", type=int, default=1024)
    p.add_argument("--out", default=None, help="a run folder for checkpoints (best.pt, last.pt)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)

    train, val = moons(a.samples, seed=0), moons(512, seed=1)
    torch.manual_seed(0)
    model = GAN()
    untrained = eval_step(model, {"real": val}).logs["gap"].item()
    callbacks = [ol.Checkpoint(a.out, monitor="val_gap", mode="min")] if a.out else []
    history = ol.fit(model, {"real": train}, val_data={"real": val}, optimizer=optimizers(),
                     step=ol.manual(gan_step), eval_step=eval_step, epochs=a.epochs, batch_size=32, seed=0,
                     callbacks=callbacks, progress=not a.no_progress)
    best = history.best("val_gap", mode="min")
    print(f"after {len(history)} epochs: generated points lie {history['val_gap'][-1]:.3f} from the moons "
          f"(best {best['val_gap']:.3f} at epoch {best['epoch']}; untrained: {untrained:.3f}); "
          f"val_loss_generator {best['val_loss_generator']:.3f}, val_loss_discriminator "
          f"{best['val_loss_discriminator']:.3f}")
    return {"history": history, "model": model, "untrained_gap": untrained}


if __name__ == "__main__":
    main()
