"""How long one anchor pass takes per image at each pass batch size (the CNN, one thread).

    python docs/pass_batch.py [BATCH ...]     (default: 128 1000 128 1000 128 1000)

Times ``Anchor.refresh`` (the --svrg-every pass over the training set) over 11,000 random
28×28 images at the untrained CNN's θ, once per BATCH in the order given, so sizes alternate and
drift on a shared machine falls on both. The pass batch only changes how the sum is split; the
training code's batch is ``rbd_hpc.svrg._PASS_BATCH``.
"""
import sys
import time

import torch

import rbd_hpc.svrg as svrg
from rbd_hpc.bench import Harness
from rbd_hpc.data import Split

torch.set_num_threads(1)
sizes = [int(b) for b in sys.argv[1:]] or [128, 1000] * 3
h = Harness("cnn", "fmnist", 32, torch.device("cpu"))
anchor = svrg.Anchor(h.model, torch.device("cpu"))
n = 11000
gen = torch.Generator().manual_seed(1)
images = Split(torch.randint(0, 256, (n, 28, 28, 1), generator=gen, dtype=torch.uint8).numpy(),
               torch.randint(0, 10, (n,), generator=gen).numpy())
for size in sizes:
    svrg._PASS_BATCH = size
    t0 = time.perf_counter()
    anchor.refresh(h.flat.theta.detach(), images, (0, n), 1.0 / n)
    print(f"batch {size:>5}: {(time.perf_counter() - t0) * 1e3 / n:.3f} ms an image", flush=True)
