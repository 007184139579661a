"""User code for the custom-model example: a small CNN over 28x28 grey digit images.

ph loads these classes by name from config.yaml; nothing here knows about ph.
"""
from pathlib import Path

import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch import nn
from torch.utils.data import Dataset


def load_image(path) -> torch.Tensor:
    """[1, 28, 28] float tensor in [0, 1]."""
    return TF.to_tensor(Image.open(path).convert("L").resize((28, 28)))


class MnistModel(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Linear(32 * 7 * 7, num_classes)

    def forward(self, x):
        return torch.log_softmax(self.classifier(self.features(x).flatten(1)), dim=1)


class MnistDataset(Dataset):
    """Images in data_dir/<digit>/*.png, labelled by their folder."""

    def __init__(self, data_dir: str):
        self.items = sorted((p, int(p.parent.name)) for p in Path(data_dir).glob("*/*.png"))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        path, label = self.items[index]
        return load_image(path), label


class MnistPreProcessor:
    """An image path (or a list of paths) -> a batch of images."""

    def process(self, x):
        paths = [x] if isinstance(x, str) else x
        return torch.stack([load_image(p) for p in paths])


class MnistPostProcessor:
    """Log-probabilities -> the predicted digit per image."""

    def process(self, x):
        return x.argmax(dim=1).tolist()
