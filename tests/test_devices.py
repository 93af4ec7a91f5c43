"""Devices: the coordinates-as-parameters formulation, CUDA (when present), IPU (when present)."""
import pytest
import torch

from rbd_hpc.bases import Basis, BasisConfig
from rbd_hpc.comm import SingleProcess
from rbd_hpc.compartments import build_compartments
from rbd_hpc.coordinates import coordinate_gradients
from rbd_hpc.ipu import CoordinateModel, poptorch_available
from rbd_hpc.methods import RandomBasesDescent
from rbd_hpc.methods.update import step_chunks
from rbd_hpc.models import FlatParameters, build_model


def setup(model="cnn", dist="gaussian", scheme="layer", device="cpu"):
    m = build_model(model, (1, 28, 28), torch.Generator().manual_seed(0)).to(device)
    flat = FlatParameters(m)
    comps = build_compartments(flat.named_sizes(), scheme, d_total=40)
    basis = Basis(BasisConfig(dist), 3, device)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand((16, 1, 28, 28), generator=gen).to(device)
    y = torch.randint(0, 10, (16,), generator=gen).to(device)
    return m, flat, comps, basis, x, y


@pytest.mark.parametrize("dist", ["gaussian", "rademacher", "srht"])
@pytest.mark.parametrize("scheme", ["network", "layer", "block:4096"])
def test_coordinates_as_parameters_equal_gradient_projection(dist, scheme):
    m, flat, comps, basis, x, y = setup(dist=dist, scheme=scheme)
    method = RandomBasesDescent(comps, basis, SingleProcess(), chunk_size=7)
    chunks = list(step_chunks(basis, comps, 5, method.directions_per_compartment, 7, reuse=False))
    if dist != "srht" and len(chunks) > 1:
        assert not torch.equal(chunks[0].chunk.phi[0], chunks[1].chunk.phi[0])
    loss_c, coeffs = coordinate_gradients(m, flat, chunks, x, y)
    flat.zero_grad()
    loss = torch.nn.functional.cross_entropy(m(x), y)
    loss.backward()
    g = flat.gradient()
    projected = torch.cat([chunk.project(g[span]) for span, chunk, _ in chunks])
    assert torch.allclose(loss_c, loss.detach())
    assert torch.allclose(coeffs, projected, rtol=1e-4, atol=1e-6)


def test_coordinate_model_is_what_poptorch_would_compile():
    m, flat, comps, basis, x, y = setup(model="fc", scheme="network")
    method = RandomBasesDescent(comps, basis, SingleProcess())
    chunks = list(step_chunks(basis, comps, 0, method.directions_per_compartment, 50, reuse=False))
    wrapped = CoordinateModel(m, flat, chunks)
    loss = wrapped(x, y)
    loss.backward()
    grads = torch.cat([p.grad for p in wrapped.coordinates])
    _, coeffs = coordinate_gradients(m, flat, chunks, x, y)
    assert torch.allclose(grads, coeffs, rtol=1e-5, atol=1e-7)
    assert sum(p.numel() for p in wrapped.parameters()) == 40 + sum(p.numel() for p in m.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("dist", ["gaussian", "rademacher", "uniform", "srht"])
def test_cuda_matches_the_reference_on_the_device(dist):
    from rbd_hpc.methods.reference import reference_rbd_step

    m, flat, comps, basis, x, y = setup(model="fc", dist=dist, device="cuda")
    method = RandomBasesDescent(comps, basis, SingleProcess())
    theta = flat.theta.clone()
    ref = theta.double().clone()
    g = torch.randn_like(theta)
    for step in range(5):
        method.step(theta, g, step, 0.1)
        ref, _ = reference_rbd_step(ref, g.double(), basis, comps, step, 0.1,
                                    method.directions_per_compartment)
    assert torch.allclose(theta.double(), ref, atol=1e-5)
    # a direction on the device is a function of its key alone: a fresh basis regenerates
    # the same bits, and in another chunking
    fresh = Basis(BasisConfig(dist), 3, "cuda")
    assert torch.equal(basis.matrix(0, 0, 100, range(3)), fresh.matrix(0, 0, 100, range(3)))
    assert torch.equal(basis.matrix(0, 0, 100, range(3))[1:], fresh.matrix(0, 0, 100, range(1, 3)))


@pytest.mark.skipif(not poptorch_available(), reason="poptorch (Graphcore SDK) is not installed")
def test_ipu_step_matches_cpu_projection():  # pragma: no cover
    from rbd_hpc.ipu import ipu_coordinate_step

    m, flat, comps, basis, x, y = setup(model="fc", scheme="network")
    method = RandomBasesDescent(comps, basis, SingleProcess())
    chunks = list(step_chunks(basis, comps, 0, method.directions_per_compartment, 50, reuse=False))
    _, on_ipu = ipu_coordinate_step(m, flat, chunks, x, y)
    _, on_cpu = coordinate_gradients(m, flat, chunks, x, y)
    assert torch.allclose(on_ipu, on_cpu, rtol=1e-3)
