"""Networks of the paper (docs/design.md) and ResNets for CIFAR-10. Imports only torch (and
NumPy for the buffer vectors).

FC and CNN follow the official Keras code: Glorot-uniform kernels, zero biases.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .errors import UserError, require_choice
from .usercode import call_factory, is_spec, load_factory

MODELS = ("fc", "cnn", "resnet8", "resnet20")


class FC(nn.Module):
    """Flatten → Dense(128, relu) → Dense(10)."""

    def __init__(self, in_shape: tuple[int, ...], classes: int = 10):
        super().__init__()
        self.fc1 = nn.Linear(int(np.prod(in_shape)), 128)
        self.fc2 = nn.Linear(128, classes)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


class CNN(nn.Module):
    """Conv(32)→Pool→Conv(64)→Pool→Conv(64)→Flatten→Dense(64)→Dense(10), 3×3 valid convs."""

    def __init__(self, in_shape: tuple[int, int, int], classes: int = 10):
        super().__init__()
        c, h, w = in_shape
        self.conv1 = nn.Conv2d(c, 32, 3)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.conv3 = nn.Conv2d(64, 64, 3)
        side = ((h - 2) // 2 - 2) // 2 - 2
        self.fc1 = nn.Linear(64 * side * side, 64)
        self.fc2 = nn.Linear(64, classes)

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = torch.relu(self.conv3(x))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(cout)
        # Keras resnet_v1: a 1×1 projection (with bias, no BN) when the shape changes
        self.shortcut = nn.Conv2d(cin, cout, 1, stride) if (stride != 1 or cin != cout) else None

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        s = x if self.shortcut is None else self.shortcut(x)
        return torch.relu(y + s)


class ResNet(nn.Module):
    """ResNet v1 for 32×32 inputs (He et al. 2016, §4.2): depth 6n+2, widths 16/32/64.

    Laid out like the Keras ``resnet_v1`` example the paper's code builds on (conv biases,
    BN after every 3×3 conv, 1×1 projection shortcuts without BN). ResNet-8 (n=1) has
    78,186 trainable parameters; the paper reports 78,330 — 144 more, which no standard
    variant we know of reproduces exactly (dropping conv biases and adding shortcut BN
    gives 78,042). BatchNorm running statistics are buffers, not part of θ.
    """

    def __init__(self, n: int, in_shape: tuple[int, int, int], classes: int = 10):
        super().__init__()
        c = in_shape[0]
        self.conv = nn.Conv2d(c, 16, 3, 1, 1)
        self.bn = nn.BatchNorm2d(16)
        blocks, cin = [], 16
        for stage, cout in enumerate((16, 32, 64)):
            for i in range(n):
                stride = 2 if (stage > 0 and i == 0) else 1
                blocks.append(ResidualBlock(cin, cout, stride))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = self.blocks(x)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def keras_init_(model: nn.Module, generator: torch.Generator) -> None:
    """Glorot-uniform kernels and zero biases (Keras defaults); BN: γ=1, β=0."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(m.weight, generator=generator)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def build_model(name: str, in_shape: tuple[int, ...], generator: torch.Generator,
                classes: int = 10) -> nn.Module:
    """A built-in network initialised from ``generator``, or the user's (``name`` a factory
    spec, usercode.py) built with torch's global generator seeded from ``generator``'s seed."""
    if is_spec(name):
        return build_user_model(name, generator.initial_seed())
    require_choice("--model", name, MODELS)
    if name != "fc" and len(in_shape) != 3:
        raise UserError(f"model {name} needs image samples (C, H, W), got samples of shape "
                        f"{tuple(in_shape)}")
    if name == "fc":
        model = FC(in_shape, classes)
    elif name == "cnn":
        if ((in_shape[1] - 2) // 2 - 2) // 2 - 2 < 1:  # three valid 3×3 convolutions, two pools
            raise UserError(f"model cnn needs images of at least 18×18, got {in_shape[1]}×{in_shape[2]}")
        model = CNN(in_shape, classes)
    else:  # resnet8, resnet20
        if in_shape[1] < 8:
            raise UserError(f"model {name} needs images of at least 8×8, got {in_shape}")
        model = ResNet(1 if name == "resnet8" else 3, in_shape, classes)
    keras_init_(model, generator)
    return model


def build_user_model(spec: str, seed: int) -> nn.Module:
    """``factory()`` for the spec, under a global torch seed (restored afterwards)."""
    factory = load_factory(spec, "--model")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = call_factory(factory, spec, "--model")
    if not isinstance(model, nn.Module):
        raise UserError(f"--model {spec}: the factory returned {type(model).__name__}, not a "
                        "torch.nn.Module")
    params = [p for p in model.parameters()]
    if not params:
        raise UserError(f"--model {spec}: the model has no parameters to train")
    kinds = {p.dtype for p in params}
    if kinds != {torch.float32}:
        raise UserError(f"--model {spec}: parameters must all be float32, got "
                        + ", ".join(sorted(str(k) for k in kinds)))
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class FlatParameters:
    """All parameters as views into one flat float32 vector θ (the method's view of the net).

    ``theta`` is the single source of truth: updating it in place updates the model.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.params = [(n, p) for n, p in model.named_parameters()]
        self.names = [n for n, _ in self.params]
        self.shapes = [tuple(p.shape) for _, p in self.params]
        self.sizes = [p.numel() for _, p in self.params]
        self.offsets = [0]
        for s in self.sizes:
            self.offsets.append(self.offsets[-1] + s)
        first = self.params[0][1]
        self.theta = torch.empty(self.offsets[-1], dtype=first.dtype, device=first.device)
        with torch.no_grad():
            for (_, p), lo, hi in zip(self.params, self.offsets, self.offsets[1:]):
                self.theta[lo:hi] = p.reshape(-1)
                p.data = self.theta[lo:hi].view(p.shape)

    @property
    def dim(self) -> int:
        return self.theta.numel()

    def gradient(self) -> torch.Tensor:
        """The flat gradient (zeros where a parameter got none)."""
        parts = [p.grad.reshape(-1) if p.grad is not None else torch.zeros_like(p.reshape(-1))
                 for _, p in self.params]
        return torch.cat(parts)

    def zero_grad(self) -> None:
        for _, p in self.params:
            p.grad = None

    def named_sizes(self) -> list[tuple[str, int]]:
        return list(zip(self.names, self.sizes))


# -- model buffers (BatchNorm statistics) as one float64 vector: snapshots, resume, averaging --

def buffers_vector(model: nn.Module) -> np.ndarray:
    bufs = [b.detach().reshape(-1).double().cpu() for _, b in model.named_buffers()]
    return torch.cat(bufs).numpy() if bufs else np.zeros(0)


def load_buffers(model: nn.Module, vec: np.ndarray) -> None:
    offset = 0
    for _, b in model.named_buffers():
        n = b.numel()
        b.copy_(torch.from_numpy(vec[offset:offset + n]).reshape(b.shape).to(b.dtype))
        offset += n
