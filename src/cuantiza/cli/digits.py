"""The demo's model and data: a small CNN trained in seconds on scikit-learn's digits.

load_digits ships 1,797 real 8x8 handwritten digits (UCI). We hold out 30% (stratified,
seeded) as the test split; nothing is downloaded.
"""

from __future__ import annotations

import torch
from torch import nn

from ..progress import bar


class DigitsCNN(nn.Module):
    """conv-bn-relu x2, a depthwise conv, then a linear classifier: every layer kind we run."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),  # 4x4
            nn.Conv2d(32, 32, 3, padding=1, groups=32),
            nn.ReLU(),  # depthwise
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 16, 64), nn.ReLU(), nn.Linear(64, 10)
        )

    def forward(self, x):
        return self.classifier(self.features(x))


def load_split(seed: int = 0):
    """(x_train, y_train, x_test, y_test): images scaled to [0, 1], shape (N, 1, 8, 8)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    tr, te = train_test_split(range(len(y)), test_size=0.3, random_state=seed, stratify=d.target)
    return x[tr], y[tr], x[te], y[te]


def batches(x, y, size: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y), generator=g)
    for i in range(0, len(y), size):
        idx = order[i : i + size]
        yield x[idx], y[idx]


def train(
    model: nn.Module, x, y, epochs: int, lr: float, seed: int = 0, desc: str = "train"
) -> nn.Module:
    """Adam on cross-entropy, seeded; works for float and QAT models alike."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    model.train()
    for epoch in bar(range(epochs), desc=desc, unit="epoch"):
        for xb, yb in batches(x, y, 64, seed + epoch):
            loss = nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x, y) -> float:
    return float((model(x).argmax(dim=1) == y).float().mean()) * 100
