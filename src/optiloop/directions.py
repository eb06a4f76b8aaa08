"""Which way a logged value improves: the one rule behind every ``mode="auto"``.

EarlyStopping, Checkpoint, the plateau scheduler and ``History.best`` all ask :func:`mode_for`, so
they can never disagree about a name. Known names decide (``val_loss`` -> min, ``val_f1`` -> max);
a name the rule cannot place is an error asking for ``mode=``, as Keras does, rather than a guess
that would stop training or cut the LR in the wrong direction.

The rule: drop a ``train_`` / ``val_`` / ``test_`` prefix; a whole name in :data:`NAMES` decides;
otherwise the name's words (split on ``_``) are read from the last to the first and the first
known word decides, so ``val_top1_error`` and ``val_dice_loss`` are minimised and ``val_f1_macro``
is maximised. Imports nothing heavy: the command line uses it before torch is loaded.

Example:
    >>> mode_for("val_loss"), mode_for("val_iou"), mode_for("val_top1_error"), mode_for("train_r2")
    ('min', 'max', 'min', 'max')
"""

from __future__ import annotations

import re

from .errors import OptiloopError

MODES = ("auto", "min", "max")

# Words of a metric name that say which way it improves.
MIN_WORDS = frozenset({
    "loss", "error", "err", "errors", "mae", "mse", "rmse", "msle", "rmsle", "mape", "smape", "wape",
    "nll", "perplexity", "ppl", "cer", "wer", "ter", "bce", "ce", "l1", "l2", "huber", "kl", "kld",
    "divergence", "distance", "hamming", "fpr", "fnr", "eer", "far", "frr", "regret", "cost",
    "seconds", "time", "latency",
})
MAX_WORDS = frozenset({
    "acc", "accuracy", "auc", "auroc", "auprc", "ap", "map", "f1", "f2", "fbeta", "iou", "miou",
    "jaccard", "dice", "r2", "precision", "recall", "sensitivity", "specificity", "tpr", "tnr", "mcc",
    "kappa", "psnr", "ssim", "bleu", "rouge", "meteor", "ndcg", "mrr", "hits", "hit", "spearman",
    "pearson", "corr", "correlation", "similarity", "match", "score", "reward", "return", "top1",
})
# Whole names whose words alone would mislead.
NAMES = {"explained_variance": "max", "calibration_error": "min", "exact_match": "max"}

_PREFIX = re.compile(r"^(train|val|valid|validation|test)_")
_TOPK = re.compile(r"^top\d+$")


def _word(word: str) -> str | None:
    if word in MIN_WORDS:
        return "min"
    if word in MAX_WORDS or _TOPK.match(word):
        return "max"
    return None


def mode_for(monitor: str, mode: str = "auto") -> str:
    """``"min"`` or ``"max"`` for the logged value ``monitor``; ``mode`` other than "auto" wins.

    Raises:
        OptiloopError: an unknown ``mode``, or ``"auto"`` for a name the rule cannot place.

    Example:
        >>> mode_for("val_acc"), mode_for("my_metric", "max")
        ('max', 'max')
    """
    if mode not in MODES:
        raise OptiloopError(f"unknown mode {mode!r}; choose one of: auto, max, min")
    if mode != "auto":
        return mode
    name = _PREFIX.sub("", str(monitor).lower())
    if name in NAMES:
        return NAMES[name]
    for word in reversed(re.split(r"[_\-./ ]+", name)):
        found = _word(word)
        if found:
            return found
    raise OptiloopError(f"cannot tell whether {monitor!r} improves up or down; pass mode='min' or "
                        "mode='max'")
