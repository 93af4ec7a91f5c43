"""How much of the first layer's mini-batch gradient 125 directions catch: smooth:2 against srht.

    python docs/gradient_share.py RUN.h5      (an fc-fmnist run file with --compartments layer)

For three snapshots of the run (the second, the sixth and the last) it takes a mini-batch of 32
training images, computes the gradient g of fc1 (weight and bias) and prints Σ_j <φ_j, g>² / ‖g‖²
for 125 unit directions of each basis. Unstructured unit directions catch 125 / D_fc1 on average.
"""
import sys

import h5py
import numpy as np
import torch

from rbd_hpc.bases import Basis, BasisConfig, ImageLayer
from rbd_hpc.data import load_dataset, to_tensor
from rbd_hpc.models import FlatParameters, build_model

ds = load_dataset("fmnist", None, 0)
model = build_model("fc", (1, 28, 28), torch.Generator().manual_seed(0))
flat = FlatParameters(model)
layer = ImageLayer(128, 1, 28, 28)
bases = {"srht": Basis(BasisConfig("srht"), 0),
         "smooth:2": Basis(BasisConfig("smooth:2"), 0, image_layers={0: layer})}
with h5py.File(sys.argv[1], "r") as f:
    for k in (1, 5, int(f["commit"][1]) - 1):
        flat.theta.copy_(torch.from_numpy(f["snapshots/theta"][k]))
        idx = np.random.default_rng(k).choice(len(ds.train.y), 32, replace=False)
        flat.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(to_tensor(ds.train.x[idx])),
                                                 torch.from_numpy(ds.train.y[idx]))
        loss.backward()
        g = flat.gradient()[:layer.size]
        share = {name: float((b.matrix(k, 0, layer.size, range(125)) @ g).square().sum()
                             / g.square().sum()) for name, b in bases.items()}
        print(f"step {int(f['snapshots/step'][k])}: share of ‖g_fc1‖² in 125 directions: "
              f"srht {share['srht']:.5f}, smooth:2 {share['smooth:2']:.5f} "
              f"({share['smooth:2'] / share['srht']:.1f}×); 125/D_fc1 = {125 / layer.size:.5f}")
