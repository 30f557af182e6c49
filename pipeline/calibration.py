"""Temperature scaling (Guo et al., 2017): one number, fitted on validation, that makes a
model's probabilities mean what they say without changing any of its decisions' order.

Networks trained with cross-entropy are often overconfident: 99 % sure and right 90 % of the
time. Dividing the logits by a temperature T > 1 softens them; T is the value that minimises
the validation set's negative log-likelihood. Ranking (and so AUC) is unchanged.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from torch import nn


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """T minimising the mean negative log-likelihood of softmax(logits / T) on these labels.
    Fitted on the logits themselves: log-probabilities recomputed from clipped probabilities
    would cap every margin (at 27.6 for a clip at 1e-12) and bias T."""
    z = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))

    def nll(log_t: float) -> float:
        return float(nn.functional.cross_entropy(z / np.exp(log_t), y))

    # T between 0.05 and 20: beyond, the probabilities are all 0/1 or all equal anyway.
    return float(np.exp(minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded").x))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """The probabilities of logits divided by T, computed as the logged model computes them
    (float32: a threshold chosen on these must call the same images the served model calls)."""
    z = torch.as_tensor(np.asarray(logits, np.float32)) / torch.tensor(float(temperature), dtype=torch.float32)
    return torch.softmax(z, 1).numpy()


def cross_fitted(logits: np.ndarray, labels: np.ndarray, units: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Calibrated probabilities of each image from a temperature fitted on the other folds
    (whole units per fold): an honest 'after calibration' figure, since a temperature judged on
    the images it was fitted on flatters itself."""
    distinct, unit = np.unique(units, return_inverse=True)
    folds = min(folds, len(distinct))
    fold = np.random.default_rng(seed).permutation(len(distinct))[unit] % max(folds, 1)
    out = np.empty((len(labels), np.asarray(logits).shape[1]))
    for k in range(folds):
        held = fold == k
        out[held] = softmax(logits[held], fit_temperature(logits[~held], labels[~held]) if (~held).any() else 1.0)
    return out


class TemperatureScaled(nn.Module):
    """The model with its logits divided by T: what is exported when `calibrate=true`."""

    def __init__(self, model: nn.Module, temperature: float):
        super().__init__()
        self.model = model
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) / self.temperature
