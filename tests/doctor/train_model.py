"""Correct: the notes' train_model pattern. Train, validate, then step the scheduler once per epoch
(ReduceLROnPlateau with the validation loss); OneCycleLR, which counts optimizer steps, is stepped
after every optimizer step. Checkpoints: the best epoch while training, the final state at the
end, each with the model, optimizer and scheduler state. --scheduler picks the schedule."""

import argparse
import os
import tempfile

import torch
from common import digits, mlp, validate
from torch import nn
from torch.optim import lr_scheduler


def train_model(model, train_loader, val_loader, loss_fn, optimizer, device, num_epochs=10, scheduler=None,
                save_dir="checkpoints", early_stopping_patience=None):
    os.makedirs(save_dir, exist_ok=True)
    history = {"train_loss": [], "train_acc": [], "val_loss": [], "val_acc": []}
    best_val_loss, epochs_no_improve = float("inf"), 0
    per_batch = isinstance(scheduler, (lr_scheduler.OneCycleLR, lr_scheduler.CyclicLR))
    for epoch in range(num_epochs):
        model.train()
        train_loss, train_correct = 0.0, 0
        for data, target in train_loader:
            data, target = data.to(device), target.to(device)
            optimizer.zero_grad()
            output = model(data)
            loss = loss_fn(output, target)
            loss.backward()
            optimizer.step()
            if per_batch:
                scheduler.step()
            train_loss += loss.item()
            train_correct += (output.argmax(1) == target).sum().item()
        avg_train_loss = train_loss / len(train_loader)
        avg_train_acc = train_correct / len(train_loader.dataset)
        avg_val_loss, avg_val_acc = validate(model, val_loader, loss_fn)
        if scheduler and not per_batch:
            if isinstance(scheduler, lr_scheduler.ReduceLROnPlateau):
                scheduler.step(avg_val_loss)
            else:
                scheduler.step()
        history["train_loss"].append(avg_train_loss)
        history["train_acc"].append(avg_train_acc)
        history["val_loss"].append(avg_val_loss)
        history["val_acc"].append(avg_val_acc)
        print(f"Epoch {epoch + 1}/{num_epochs}: Train Loss: {avg_train_loss:.4f}, Train Acc: "
              f"{100 * avg_train_acc:.2f}% | Val Loss: {avg_val_loss:.4f}, Val Acc: {100 * avg_val_acc:.2f}%")
        if avg_val_loss < best_val_loss:
            best_val_loss, epochs_no_improve = avg_val_loss, 0
            torch.save({"epoch": epoch, "model_state_dict": model.state_dict(),
                        "optimizer_state_dict": optimizer.state_dict(),
                        "scheduler_state_dict": scheduler.state_dict() if scheduler else None,
                        "loss": avg_val_loss, "acc": avg_val_acc}, os.path.join(save_dir, "best_model.pth"))
        else:
            epochs_no_improve += 1
        if early_stopping_patience and epochs_no_improve >= early_stopping_patience:
            print(f"Early stopping triggered after {epoch + 1} epochs!")
            break
    torch.save({"epoch": num_epochs, "model_state_dict": model.state_dict(),
                "optimizer_state_dict": optimizer.state_dict()}, os.path.join(save_dir, "final_model.pth"))
    return history


parser = argparse.ArgumentParser()
parser.add_argument("--scheduler", choices=["step", "cosine", "plateau", "onecycle", "none"], default="step")
parser.add_argument("--epochs", type=int, default=4)
args = parser.parse_args()

train_loader, val_loader = digits()
model = mlp()
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
scheduler = {
    "step": lambda: lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.1),
    "cosine": lambda: lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs),
    "plateau": lambda: lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=1),
    "onecycle": lambda: lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, epochs=args.epochs,
                                                steps_per_epoch=len(train_loader)),
    "none": lambda: None,
}[args.scheduler]()
with tempfile.TemporaryDirectory() as save_dir:
    train_model(model, train_loader, val_loader, nn.CrossEntropyLoss(), optimizer, torch.device("cpu"),
                num_epochs=args.epochs, scheduler=scheduler, save_dir=save_dir, early_stopping_patience=5)
