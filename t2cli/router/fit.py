"""Fit the router's classifier: standardised features, multinomial logistic regression (scikit-learn).

scikit-learn is imported here only: ``t2 router train`` needs it, ``t2 ask`` does not
(``Router`` predicts with torch). The L2 strength C is chosen on the validation prompts
from a small grid; ties go to the stronger regularisation (smaller C), which moves less
when the prompts differ from the training sources.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0)
MAX_ITER = 2000
MIN_SCALE = 1e-6  # a feature constant over the training prompts is divided by this, not by 0


@dataclass(frozen=True)
class Fitted:
    """The classifier's tensors, the C chosen, and the validation accuracy of every C tried."""

    mean: torch.Tensor
    scale: torch.Tensor
    coef: torch.Tensor
    intercept: torch.Tensor
    c: float
    valid_accuracy: float
    accuracy_by_c: dict[float, float]


def fit_classifier(
    train_x: torch.Tensor,
    train_y: Sequence[str],
    valid_x: torch.Tensor,
    valid_y: Sequence[str],
    classes: Sequence[str],
    *,
    c_grid: Sequence[float] = C_GRID,
    seed: int = 0,
) -> Fitted:
    """Fit one classifier per C on the training features, keep the best on validation.

    ``classes`` fixes the order of the outputs (every class must occur in ``train_y``).
    """
    missing = sorted(set(classes) - set(train_y))
    if missing:
        raise ValueError(f"no training prompt for class {missing[0]!r}")
    index = {c: i for i, c in enumerate(classes)}
    y_train = np.array([index[c] for c in train_y])
    y_valid = np.array([index[c] for c in valid_y])
    scaler = StandardScaler().fit(train_x.numpy())
    scale = np.maximum(scaler.scale_, MIN_SCALE)
    xt = (train_x.numpy() - scaler.mean_) / scale
    xv = (valid_x.numpy() - scaler.mean_) / scale
    best: tuple[float, float, LogisticRegression] | None = None
    accuracy_by_c = {}
    for c in sorted(c_grid):
        model = LogisticRegression(C=c, max_iter=MAX_ITER, random_state=seed).fit(xt, y_train)
        accuracy = float((model.predict(xv) == y_valid).mean()) if len(y_valid) else float("nan")
        accuracy_by_c[c] = accuracy
        if best is None or accuracy > best[0]:
            best = (accuracy, c, model)
    assert best is not None
    accuracy, c, model = best
    # LogisticRegression orders its outputs by label value, and every label 0..K-1 occurs in y_train.
    coef, intercept = model.coef_, model.intercept_
    if len(classes) == 2:  # binary: one row w gives p(class 1) = sigmoid(w x + b) = softmax([-(wx+b)/2, (wx+b)/2])
        coef, intercept = np.concatenate([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
    return Fitted(
        mean=torch.tensor(scaler.mean_, dtype=torch.float32),
        scale=torch.tensor(scale, dtype=torch.float32),
        coef=torch.tensor(coef, dtype=torch.float32),
        intercept=torch.tensor(intercept, dtype=torch.float32),
        c=c,
        valid_accuracy=accuracy,
        accuracy_by_c=accuracy_by_c,
    )
