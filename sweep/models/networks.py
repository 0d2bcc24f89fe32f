"""Plain torch networks. Input shape and output size come from the data, never the user."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


class MLP(nn.Module):
    """Flatten, then ``depth`` blocks of linear -> (batch norm) -> activation -> dropout."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_outputs: int,
        depth: int,
        width: int,
        activation: str,
        dropout: float,
        batch_norm: bool,
    ):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        size = math.prod(input_shape)
        for _ in range(depth):
            layers.append(nn.Linear(size, width))
            if batch_norm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(_ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            size = width
        layers.append(nn.Linear(size, num_outputs))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class CNN(nn.Module):
    """Conv blocks over 1-D sequences (input (L,)) or 2-D images (input (H, W)).

    Each block: conv (same padding) -> (batch norm) -> ReLU -> max-pool(2) while the
    spatial size is at least 4; then dropout and a linear head over the flattened maps,
    which keeps position information (it matters on mnist1d).
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_outputs: int,
        channels: int,
        depth: int,
        kernel_size: int,
        dropout: float,
        batch_norm: bool,
    ):
        super().__init__()
        if len(input_shape) not in (1, 2):
            raise ValueError(f"cnn needs 1-D or 2-D samples, got shape {input_shape}")
        self.dims = len(input_shape)
        conv = nn.Conv1d if self.dims == 1 else nn.Conv2d
        norm = nn.BatchNorm1d if self.dims == 1 else nn.BatchNorm2d
        pool = nn.MaxPool1d if self.dims == 1 else nn.MaxPool2d
        blocks: list[nn.Module] = []
        in_ch, size = 1, min(input_shape)
        for _ in range(depth):
            blocks.append(conv(in_ch, channels, kernel_size, padding=kernel_size // 2))
            if batch_norm:
                blocks.append(norm(channels))
            blocks.append(nn.ReLU())
            if size >= 4:
                blocks.append(pool(2))
                size //= 2
            in_ch = channels
        self.features = nn.Sequential(*blocks)
        with torch.no_grad():
            flat = self.features(torch.zeros(1, 1, *input_shape)).numel()
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(flat, num_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.unsqueeze(1)))


#: Network classes by ``model.name``. A new model: a class taking
#: ``(input_shape, num_outputs, **model_cfg)``, an entry here, conf/model/<name>.yaml, and
#: its key rules in ``sweep.config.SCHEMAS["model"]``.
NETWORKS: dict[str, type[nn.Module]] = {"mlp": MLP, "cnn": CNN}


def build_network(model_cfg: Any, input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    """Build the network named by ``model_cfg["name"]`` for the data's shapes."""
    params = {k: v for k, v in dict(model_cfg).items() if k != "name"}
    name = model_cfg["name"]
    if name not in NETWORKS:
        raise ValueError(f"unknown model {name!r}")
    return NETWORKS[name](input_shape, num_outputs, **params)


def count_parameters(network: nn.Module) -> int:
    return sum(p.numel() for p in network.parameters() if p.requires_grad)
