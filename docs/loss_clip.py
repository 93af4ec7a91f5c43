"""Would Keras' clipped cross-entropy have changed any gradient of a run?

    python docs/loss_clip.py RUN.h5 [RUN.h5 ...]      (a run file of a built-in image data set)

The official code scores its softmax output with Keras' ``categorical_crossentropy`` on
probabilities, which (when Keras does not take the logits from the Softmax op instead) clips
p_y, the probability of the true class, to [1e-7, 1 - 1e-7]. Its gradient differs from
log-softmax's (rbd-hpc's) only for an image outside that range. For each run file this loads
the last committed weights and prints, over the run's training split (no augmentation):
the mean training loss, how many images have p_y < 1e-7 (the clip removes their whole
gradient), how many have p_y > 1 - 1e-7 (it removes a gradient under 1.2e-7), the smallest
p_y, and the share of sum |1 - p_y| (the size of the logit gradients) the clip would remove.
"""
import sys

import torch

from rbd_hpc.api import scorer
from rbd_hpc.errors import UserError

torch.set_num_threads(1)
for path in sys.argv[1:]:
    try:
        run = scorer(path)
    except UserError as e:
        sys.exit(f"loss_clip.py: {e}")
    net, data = run.net.eval(), run.data
    x, y = data.train.x, torch.from_numpy(data.train.y).long()
    with torch.no_grad():
        logp = torch.cat([torch.log_softmax(net(data.inputs.tensor(x[i:i + 2000])), 1)
                          for i in range(0, len(y), 2000)])
    p = logp.gather(1, y[:, None])[:, 0].exp()
    clipped = (p < 1e-7) | (p > 1 - 1e-7)
    removed = (1 - p)[clipped].sum().item() / (1 - p).sum().item()
    print(f"{path}: step {run.weights.step}, {len(y)} training images, train loss "
          f"{-p.log().mean():.4f}; p_y < 1e-7: {(p < 1e-7).sum().item()}; p_y > 1-1e-7: "
          f"{(p > 1 - 1e-7).sum().item()}; smallest p_y {p.min():.3e}; share of sum|1-p_y| "
          f"the clip removes: {removed:.2e}")
