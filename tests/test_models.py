import math

import pytest
import torch

from rbd_hpc.models import FlatParameters, build_model, count_parameters


@pytest.mark.parametrize("name,shape,count", [
    ("fc", (1, 28, 28), 101_770), ("fc", (3, 32, 32), 394_634),
    ("cnn", (1, 28, 28), 93_322), ("cnn", (3, 32, 32), 122_570),
    ("resnet8", (3, 32, 32), 78_186), ("resnet20", (3, 32, 32), 273_066),
])
def test_parameter_counts(name, shape, count):
    model = build_model(name, shape, torch.Generator().manual_seed(0))
    assert count_parameters(model) == count
    out = model(torch.zeros((2,) + shape))
    assert out.shape == (2, 10)


def test_keras_initialisation():
    model = build_model("fc", (1, 28, 28), torch.Generator().manual_seed(0))
    limit = math.sqrt(6 / (784 + 128))
    assert model.fc1.weight.abs().max() <= limit
    assert model.fc1.weight.abs().max() > 0.95 * limit
    assert torch.equal(model.fc1.bias, torch.zeros(128))


def test_init_is_keyed_by_the_generator():
    a = build_model("cnn", (1, 28, 28), torch.Generator().manual_seed(1))
    b = build_model("cnn", (1, 28, 28), torch.Generator().manual_seed(1))
    assert torch.equal(FlatParameters(a).theta, FlatParameters(b).theta)


def test_flat_parameters_are_views():
    model = build_model("fc", (1, 28, 28), torch.Generator().manual_seed(0))
    flat = FlatParameters(model)
    flat.theta.zero_()
    assert model.fc2.bias.abs().sum() == 0
    flat.theta[-1] = 3.0
    assert model.fc2.bias[-1] == 3.0
    assert flat.offsets[-1] == 101_770
