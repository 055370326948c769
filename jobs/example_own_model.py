"""The model of jobs/example_own_model.toml: a plain CNN of your own, named in the grid by
reference ("example_own_model.py:build", relative to the grid file's folder). Any function that
takes num_classes (and the grid's model_options as keyword arguments) and returns an nn.Module
mapping (N, 3, H, W) images to (N, num_classes) logits will do; no particular attribute names."""

from torch import nn


def build(num_classes: int, width: int = 16) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes))
