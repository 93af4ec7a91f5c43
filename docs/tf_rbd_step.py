"""The official RBD step, built in TensorFlow as models/rbd.py builds it, against rbd-hpc's.

    python docs/tf_rbd_step.py [--method rbd|nes] [--seed S] [--steps K] [--every N]
                               [--augment] [--threads T]

Needs TensorFlow, which rbd-hpc does not install (``pip install tensorflow-cpu`` in a separate
virtual environment that also has rbd-hpc, as for docs/keras_sgd.py). It checks whether
rbd-hpc's RBD step is the official one (graphcore-research/random-bases, models/rbd.py and
mixins/random_base.py), by running both side by side from the same θ0 on the same batches and
the same directions, under ``--protocol paper`` on the CNN (Fashion-MNIST, d = 250, one
compartment, rate 0.125, batch 32; augmentation off unless ``--augment``).

The TensorFlow side is written from the official code, not from rbd-hpc's:
  - each variable is used as W + E c, the official ``noise_product``: the d directions in
    batches of 50 (``base.batching``), E = ε / auto_norm(D) with auto_norm(D) = √D, and the
    coordinates c a zero vector reset before every step;
  - the network is ``base_conv`` channel-last (tf.nn ops, as Keras' Conv2D, MaxPool2D,
    Flatten and Dense compute it) ending in a softmax, scored by Keras'
    ``categorical_crossentropy`` on its probabilities;
  - the coordinate gradient is the gradient of that loss with respect to c, which is assigned
    to the coordinates; the step of each variable is the same product E c (batched sum), applied
    by ``tf.keras.optimizers.SGD(learning_rate).apply_gradients``.
Only the inputs are shared: θ0 (rbd-hpc's Glorot-uniform draw, moved to Keras' layout), each
step's batch, and each step's directions ε / √D (rbd-hpc's Philox draws, moved to Keras'
layout), since TensorFlow's stateless sampler would draw other ones.

The rbd-hpc side is the ``rbd-hpc train --preset cnn-fmnist --method rbd --protocol paper
--no-augment --seed S`` run step for step (its validation accuracies are that run's). Each side
then follows its own trajectory. Every ``--every`` steps it prints the step's
coordinate gradients as the official graph computes them at rbd-hpc's θ (the largest
difference relative to the largest coordinate), the two trajectories' distance relative to
how far θ has moved, and both losses; after every epoch, both networks' validation accuracy.

``--method nes`` does the same for the official NES update (models/nes.py) against rbd-hpc's
``--nes paper`` (see ``run_nes``): 625 updates are the paper's 100 epochs of images.
"""
import argparse
import math
import sys
import time

import numpy as np
import torch

from rbd_hpc.comm import SingleProcess
from rbd_hpc.config import TrainConfig
from rbd_hpc.errors import UserError
from rbd_hpc.train import evaluate, set_up, step_batch, take_step
from tf_cpu import tensorflow  # docs/tf_cpu.py, beside this script

BATCHING = 50  # the official base.batching: the noise product runs over 50 directions at a time


def parse(argv):
    p = argparse.ArgumentParser(prog="tf_rbd_step.py", description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=1562,
                   help="steps to run (RBD: 1562 are one epoch; NES: 625 are 100)")
    p.add_argument("--every", type=int, default=100, help="print a comparison every N steps")
    p.add_argument("--method", choices=("rbd", "nes"), default="rbd",
                   help="nes: the official NES update (models/nes.py) instead")
    p.add_argument("--augment", action="store_true", help="the paper's augmentation on")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    if a.steps < 1 or a.every < 1 or a.threads < 1:
        p.error(f"--steps {a.steps}, --every {a.every} and --threads {a.threads} must be positive")
    return a


def to_keras(name: str, shape: tuple, rows: np.ndarray) -> np.ndarray:
    """Rows (n × size) of one torch parameter in torch's layout → (n × size) in Keras' layout."""
    n = rows.shape[0]
    t = rows.reshape((n,) + shape)
    if len(shape) == 4:                       # conv (O, I, kh, kw) → (kh, kw, I, O)
        t = t.transpose(0, 3, 4, 2, 1)
    elif len(shape) == 2 and name.startswith("fc1"):
        # dense after Flatten: torch flattens (C, H, W), Keras (H, W, C)
        side = int(round(math.sqrt(shape[1] // 64)))
        t = t.reshape(n, shape[0], 64, side, side).transpose(0, 3, 4, 2, 1)
    elif len(shape) == 2:                     # dense (out, in) → (in, out)
        t = t.transpose(0, 2, 1)
    return np.ascontiguousarray(t).reshape(n, -1)


def keras_shape(shape: tuple) -> tuple:
    if len(shape) == 4:
        return (shape[2], shape[3], shape[1], shape[0])
    if len(shape) == 2:
        return (shape[1], shape[0])
    return shape


class Official:
    """The TensorFlow side: the official network and noise product on Keras-layout copies of
    rbd-hpc's θ, directions and batches (``s``: rbd-hpc's session, which supplies them)."""

    def __init__(self, tf, s):
        self.tf, self.s = tf, s
        sizes = [int(np.prod(sh)) for sh in s.flat.shapes]
        self.layout = list(zip(s.flat.names, s.flat.shapes, np.cumsum([0] + sizes)[:-1],
                               np.cumsum(sizes)))
        self.weights = [tf.Variable(w) for w in self.vectors(s.theta0)]

    def vectors(self, flat: np.ndarray) -> list:
        """A flat torch θ as arrays of Keras' shapes."""
        return [to_keras(n, sh, flat[None, lo:hi])[0].reshape(keras_shape(sh))
                for n, sh, lo, hi in self.layout]

    def at_torch(self) -> list:
        """rbd-hpc's θ as it stands, as Keras-layout constants."""
        return [self.tf.constant(w) for w in self.vectors(self.s.flat.theta.detach().numpy())]

    def bases(self, phi: np.ndarray) -> list:
        """Per variable, E (size × d) in Keras' layout, from the step's d rows."""
        return [self.tf.constant(to_keras(n, sh, phi[:, lo:hi]).T)
                for n, sh, lo, hi in self.layout]

    def noise_product(self, E, c, shape):
        """The official optimized noise_product: Σ over batches of 50 directions of E_b c_b."""
        tf = self.tf
        p = tf.zeros(shape)
        for lo in range(0, E.shape[1], BATCHING):
            p = p + tf.reshape(tf.matmul(E[:, lo:lo + BATCHING],
                                         tf.expand_dims(c[lo:lo + BATCHING], -1)), shape)
        return p

    def forward(self, ws, x):
        tf = self.tf
        k1, b1, k2, b2, k3, b3, k4, b4, k5, b5 = ws
        h = tf.nn.max_pool2d(tf.nn.relu(tf.nn.conv2d(x, k1, 1, "VALID") + b1), 2, 2, "VALID")
        h = tf.nn.max_pool2d(tf.nn.relu(tf.nn.conv2d(h, k2, 1, "VALID") + b2), 2, 2, "VALID")
        h = tf.nn.relu(tf.nn.conv2d(h, k3, 1, "VALID") + b3)
        h = tf.reshape(h, [tf.shape(h)[0], -1])
        h = tf.nn.relu(tf.matmul(h, k4) + b4)
        return tf.nn.softmax(tf.matmul(h, k5) + b5)

    def loss_of(self, ws, x, y):
        tf = self.tf
        return tf.reduce_mean(tf.keras.losses.categorical_crossentropy(tf.one_hot(y, 10),
                                                                       self.forward(ws, x)))

    def nhwc(self, x: torch.Tensor):
        return self.tf.constant(x.permute(0, 2, 3, 1).contiguous().numpy())

    def batch(self, step: int, offset: int = 0):
        """rbd-hpc's batch for ``step`` (its ``offset``-th, NES) as TensorFlow tensors."""
        x, y = step_batch(self.s, step, offset)
        return self.nhwc(x), self.tf.constant(y.numpy())

    def apart(self) -> float:
        """‖θ_tf − θ‖ / ‖θ − θ0‖: how far the two trajectories have parted, relative to how far
        θ has moved."""
        theta = self.s.flat.theta.detach().numpy()
        theta_tf = np.concatenate([to_keras_inverse(w.numpy(), n, sh)
                                   for w, (n, sh, _, _) in zip(self.weights, self.layout)])
        return (np.linalg.norm(theta_tf - theta)
                / np.linalg.norm(theta - self.s.theta0))

    def val_accs(self) -> tuple[float, float]:
        """Validation accuracy of rbd-hpc's network and of the official one."""
        s, hits = self.s, 0
        _, acc_torch = evaluate(s.model, s.data.val, s.comm, s.device, s.data.inputs)
        for lo in range(0, len(s.data.val.y), 1000):
            x = self.nhwc(s.data.inputs.tensor(s.data.val.x[lo:lo + 1000]))
            probs = self.forward(self.weights, x)
            hits += int(np.sum(np.argmax(probs.numpy(), 1) == s.data.val.y[lo:lo + 1000]))
        return acc_torch, hits / len(s.data.val.y)


def is_check(a, step: int) -> bool:
    return (step + 1) % a.every == 0 or step == 0 or step + 1 == a.steps


def main(argv):
    a = parse(argv)
    tf = tensorflow("tf_rbd_step.py", a.threads)
    try:
        cfg = TrainConfig.from_preset("cnn-fmnist", protocol="paper", method=a.method,
                                      augment=a.augment, seed=a.seed, steps=a.steps,
                                      threads=a.threads)
        s = set_up(cfg, SingleProcess())
    except UserError as e:
        sys.exit(f"tf_rbd_step.py: {e}")
    comp, = s.compartments                      # the paper's one compartment
    print(f"CNN-FMNIST, --protocol paper, seed {a.seed}: D = {s.flat.dim}, d = {comp.d}, "
          f"lr = {cfg.lr:g}, {cfg.dist} directions, normalize {cfg.normalize}, augment "
          f"{cfg.augment}; parameters {', '.join(s.flat.names)}", flush=True)
    o = Official(tf, s)

    # the two networks on θ0: the same function?
    x0, y0 = step_batch(s, 0)
    with torch.no_grad():
        p_torch = torch.softmax(s.model(x0), 1).numpy()
        loss_torch = float(s.loss_fn(s.model(x0), y0))
    p_tf = o.forward(o.weights, o.nhwc(x0)).numpy()
    print(f"θ0, batch 0: max |p_torch - p_tf| = {np.abs(p_torch - p_tf).max():.2e}, "
          f"loss torch {loss_torch:.7f}, "
          f"TensorFlow {float(o.loss_of(o.weights, *o.batch(0))):.7f}", flush=True)

    # the initialisation: rbd-hpc's θ0 against Keras' own defaults for each variable
    init = []
    for n, w in zip(s.flat.names, o.weights):
        if n.endswith("bias"):
            init.append(f"{n.split('.')[0]} bias max |b| {np.abs(w.numpy()).max():g}")
            continue
        keras = tf.keras.initializers.GlorotUniform(seed=a.seed)(w.shape).numpy()
        init.append(f"{n.split('.')[0]} kernel max |w| {np.abs(w.numpy()).max():.4f} std "
                    f"{w.numpy().std():.4f} (Keras GlorotUniform: {np.abs(keras).max():.4f}, "
                    f"{keras.std():.4f})")
    print("θ0: " + "; ".join(init), flush=True)
    (run_nes if a.method == "nes" else run_rbd)(tf, a, o)


def run_rbd(tf, a, o: Official):
    """The official RBD step (models/rbd.py) beside rbd-hpc's, step by step."""
    s = o.s
    comp, = s.compartments
    d, lr = comp.d, s.cfg.lr
    optimizer = tf.keras.optimizers.SGD(learning_rate=lr)

    @tf.function
    def coordinate_gradient(ws, Es, x, y):
        c = tf.zeros([d])                        # reset_coordinates_each_step
        with tf.GradientTape() as tape:
            tape.watch(c)
            eff = [w + o.noise_product(E, c, w.shape) for w, E in zip(ws, Es)]
            loss = o.loss_of(eff, x, y)
        return tape.gradient(loss, c), loss

    @tf.function
    def official_step(Es, x, y):
        g, loss = coordinate_gradient(o.weights, Es, x, y)
        steps = [o.noise_product(E, g, w.shape) for w, E in zip(o.weights, Es)]
        optimizer.apply_gradients(zip(steps, o.weights))
        return g, loss

    rel_coef, t0 = [], time.perf_counter()
    for step in range(a.steps):
        phi = s.method.basis.matrix(s.method.key_step(step), comp.index, comp.size,
                                    range(d)).numpy()
        Es = o.bases(phi)
        xt, yt = o.batch(step)
        check = is_check(a, step)
        if check:  # the official graph's coordinate gradients at rbd-hpc's θ
            g_at_torch, _ = coordinate_gradient(o.at_torch(), Es, xt, yt)
        theta_before = s.flat.theta.detach().numpy().astype(np.float64)
        stats = take_step(s, step)
        _, loss_tf = official_step(Es, xt, yt)
        c_torch = stats.result.coefficients.numpy()
        if check:
            diff = np.abs(g_at_torch.numpy() - c_torch).max() / np.abs(c_torch).max()
            rel_coef.append(diff)
            # the step in float64 from rbd-hpc's coefficients, and what storing θ + step in
            # float32 alone does to it: the floor of any two implementations' agreement
            exact = -lr * (c_torch.astype(np.float64) @ phi.astype(np.float64))
            stored = (theta_before + exact).astype(np.float32).astype(np.float64)
            floor = np.linalg.norm(stored - theta_before - exact) / np.linalg.norm(exact)
            print(f"step {step + 1}: coordinate gradients at rbd-hpc's θ, max diff / max "
                  f"{diff:.1e}; ‖θ_tf − θ‖ / ‖θ − θ0‖ = {o.apart():.1e}; float32 "
                  f"storage of θ rounds this step by {floor:.1e} of its size; loss torch "
                  f"{stats.loss:.5f}, TensorFlow {float(loss_tf):.5f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
        if (step + 1) % s.stream.steps_per_epoch == 0 and step + 1 < a.steps:
            print(f"epoch {(step + 1) // s.stream.steps_per_epoch}: validation accuracy "
                  "rbd-hpc {:.4f}, official graph {:.4f}".format(*o.val_accs()), flush=True)
    print(f"after {a.steps} steps: validation accuracy "
          "rbd-hpc {:.4f}, official graph {:.4f}; ".format(*o.val_accs())
          + f"coordinate gradients at rbd-hpc's θ agree to {max(rel_coef):.1e} of the largest "
          "at every check", flush=True)


def run_nes(tf, a, o: Official):
    """The official NES update (models/nes.py) beside rbd-hpc's ``--nes paper``: offspring
    W + σ ε_i (ε_i unnormalised) each scored on its own batch, centred ranks of the losses
    (``argsort`` descending, rank / (n − 1) − 0.5) over σ n, and W += lr · Σ_i r_i ε_i / √D
    through the same batched noise product, applied with ``K.update_add``."""
    s = o.s
    comp, = s.compartments
    n, lr, sigma = comp.d, s.cfg.lr, s.cfg.sigma
    root_d = math.sqrt(s.flat.dim)

    @tf.function
    def offspring_losses(ws, Es, xs, ys):
        def one(i):
            return o.loss_of([w + sigma * root_d * tf.reshape(E[:, i], w.shape)
                              for w, E in zip(ws, Es)], xs[i], ys[i])
        return tf.map_fn(one, tf.range(n), fn_output_signature=tf.float32,
                         parallel_iterations=1)

    def official_ranks(values):
        order = tf.argsort(values, direction="DESCENDING")
        ranks = tf.scatter_nd(tf.expand_dims(order, 1), tf.range(n, dtype=tf.float32), [n])
        return ranks / float(n - 1) - 0.5

    @tf.function
    def official_update(Es, normalized):
        for w, E in zip(o.weights, Es):
            w.assign_add(lr * o.noise_product(E, normalized, w.shape))

    print(f"NES: σ = {sigma:g}, n = {n} offspring on their own batches, lr = {lr:g}, "
          f"{s.total} updates", flush=True)
    t0, swapped = time.perf_counter(), []
    for step in range(a.steps):
        phi = s.method.basis.matrix(s.method.key_step(step), comp.index, comp.size,
                                    range(n)).numpy()
        Es = o.bases(phi)
        xs, ys = (tf.stack(part) for part in zip(*(o.batch(step, i) for i in range(n))))
        check = is_check(a, step)
        if check:  # the official ranks from the losses at rbd-hpc's θ
            ranks_at_torch = official_ranks(offspring_losses(o.at_torch(), Es, xs, ys)).numpy()
        stats = take_step(s, step)
        ranks_torch = -stats.result.coefficients.numpy() * n * sigma  # rbd-hpc steps by −c
        normalized = official_ranks(offspring_losses(o.weights, Es, xs, ys)) / (sigma * n)
        official_update(Es, normalized)
        if check:
            differ = int(np.sum(np.abs(ranks_at_torch - ranks_torch) > 1e-6))
            swapped.append(differ)
            print(f"update {step + 1}: official ranks at rbd-hpc's θ differ for {differ} of {n} "
                  f"offspring (max |Δ| {np.abs(ranks_at_torch - ranks_torch).max():.3f}); "
                  f"‖θ_tf − θ‖ / ‖θ − θ0‖ = {o.apart():.1e}; validation accuracy "
                  "rbd-hpc {:.4f}, official update {:.4f} ".format(*o.val_accs())
                  + f"({time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"after {a.steps} updates ({a.steps * n * s.cfg.batch_size / len(s.data.train.y):g} "
          f"epochs of images): ranks differed for at most {max(swapped)} of {n} offspring at "
          f"a check", flush=True)


def to_keras_inverse(w: np.ndarray, name: str, shape: tuple) -> np.ndarray:
    """A Keras variable back to torch's flat layout (the inverse of ``to_keras``)."""
    if len(shape) == 4:
        t = w.transpose(3, 2, 0, 1)
    elif len(shape) == 2 and name.startswith("fc1"):
        side = int(round(math.sqrt(shape[1] // 64)))
        t = w.reshape(side, side, 64, shape[0]).transpose(3, 2, 0, 1)
    elif len(shape) == 2:
        t = w.T
    else:
        t = w
    return np.ascontiguousarray(t).reshape(-1)


if __name__ == "__main__":
    main(sys.argv[1:])
