"""The linear probe scores within 3 points of scikit-learn's logistic regression on its digits (seconds;
the evaluators' other tests: tests/unit/test_eval_metrics.py)."""

import numpy as np
import pytest
import torch

from pretrain_mm.eval.linear_probe import linear_probe


def test_linear_probe_close_to_sklearn_logistic_regression():
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data.astype(np.float32), digits.target, test_size=0.3, random_state=0, stratify=digits.target
    )
    scaler = StandardScaler().fit(x_train)  # what the probe's BatchNorm does with its running statistics
    reference = LogisticRegression(max_iter=3000).fit(scaler.transform(x_train), y_train)
    expected = reference.score(scaler.transform(x_test), y_test)
    metrics, predictions = linear_probe(
        torch.tensor(x_train), torch.tensor(y_train), torch.tensor(x_test), torch.tensor(y_test), 10
    )
    assert abs(metrics["top1"] - expected) < 0.03, (metrics, expected)
    assert metrics["top1"] == pytest.approx((predictions.numpy() == y_test).mean())
