"""The paper's CNN SGD baseline trained by Keras itself, on rbd-hpc's split of the same images.

    python docs/keras_sgd.py OUT.jsonl [--seed S] [--epochs N] [--no-augment] [--threads T]

Needs TensorFlow, which rbd-hpc does not install (``pip install tensorflow-cpu`` in a separate
virtual environment that also has rbd-hpc: TensorFlow pins other versions of h5py). It checks
whether the CNN SGD gap to the paper (docs/results.md, Table A) comes from rbd-hpc's torch
implementation or would appear in the official framework too. Everything but the split is
built the official way (vendor/img of graphcore-research/random-bases): the `base_conv`
network as a Keras Sequential with Keras' default initialisers and a softmax output,
``categorical_crossentropy`` on its probabilities, plain SGD at 2^-9 · 32 = 0.0625, batch 32
from one repeated stream (1,563 steps an epoch), a shuffle buffer of 50,000 redrawn every
pass, and, on the training images only, pad to 34 × 34, a random 28 × 28 crop and random
brightness ± 0.5 (tf.image), drawn anew on every pass. The split is rbd-hpc's ``--protocol
paper`` split for ``--seed`` (50,000 / 10,000, keyed by the seed), so the validation images are
those of the rbd-hpc runs with that seed.
After every epoch one JSON line goes to OUT.jsonl (epoch, train_loss, val_loss, val_acc,
test_loss, test_acc, as in rbd-hpc's metrics files). Not bitwise reproducible: TensorFlow's
random ops are seeded but its kernels are not made deterministic here.
"""
import argparse
import json
import os
import sys
from pathlib import Path

from rbd_hpc.data import load_dataset
from rbd_hpc.errors import UserError
from rbd_hpc.runlog import check_writable
from tf_cpu import tensorflow  # docs/tf_cpu.py, beside this script

LR = 2 ** -9 * 32


def parse(argv):
    p = argparse.ArgumentParser(prog="keras_sgd.py", description=__doc__.split("\n")[0])
    p.add_argument("out", help="metrics file to write, one JSON line per epoch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--no-augment", dest="augment", action="store_false")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    if a.epochs < 1 or a.threads < 1:
        p.error(f"--epochs {a.epochs} and --threads {a.threads} must be positive")
    if not a.out.strip():
        p.error("OUT '' is empty; give a file name")
    if os.path.exists(a.out):
        p.error(f"{a.out} exists; choose another OUT (nothing is overwritten)")
    return a


def network(tf):
    L = tf.keras.layers
    return tf.keras.Sequential([
        tf.keras.Input((28, 28, 1)),
        L.Conv2D(32, (3, 3), activation="relu"), L.MaxPool2D((2, 2)),
        L.Conv2D(64, (3, 3), activation="relu"), L.MaxPool2D((2, 2)),
        L.Conv2D(64, (3, 3), activation="relu"),
        L.Flatten(), L.Dense(64, activation="relu"), L.Dense(10, activation="softmax")])


def main(argv):
    a = parse(argv)
    try:  # the project's own check: a missing directory, a directory, no write permission
        check_writable(Path(a.out), "OUT")
    except UserError as e:
        sys.exit(f"keras_sgd.py: {e}")
    tf = tensorflow("keras_sgd.py", a.threads)
    tf.keras.utils.set_random_seed(a.seed)
    try:
        data = load_dataset("fmnist", None, a.seed, 10000)
    except UserError as e:
        sys.exit(f"keras_sgd.py: {e}")

    def pipeline(split, train):
        ds = tf.data.Dataset.from_tensor_slices((split.x, tf.one_hot(split.y, 10)))
        ds = ds.map(lambda x, y: (tf.cast(x, tf.float32) / 255.0, y))
        if not train:
            return ds.batch(1000)
        if a.augment:
            ds = ds.map(lambda x, y: (tf.image.random_brightness(tf.image.random_crop(
                tf.image.resize_with_crop_or_pad(x, 34, 34), [28, 28, 1]), 0.5), y))
        # one repeated stream read by one iterator, as the official infeed: a new iterator every
        # epoch would redraw the same crops and brightness from the same seeds every epoch
        ds = ds.shuffle(50000, seed=a.seed, reshuffle_each_iteration=True).repeat()
        return ds.batch(32, drop_remainder=True).prefetch(2)

    train, val, test = (pipeline(data.train, True), pipeline(data.val, False),
                        pipeline(data.test, False))
    net = network(tf)
    assert net.count_params() == 93322, net.count_params()
    net.compile(optimizer=tf.keras.optimizers.SGD(LR), loss="categorical_crossentropy",
                metrics=["accuracy"])

    class Record(tf.keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            val_loss, val_acc = net.evaluate(val, verbose=0)
            test_loss, test_acc = net.evaluate(test, verbose=0)
            row = {"epoch": epoch + 1, "train_loss": logs["loss"], "val_loss": val_loss,
                   "val_acc": val_acc, "test_loss": test_loss, "test_acc": test_acc}
            out.write(json.dumps(row) + "\n")
            out.flush()
            print(f"epoch {epoch + 1}: train_loss {logs['loss']:.4f} val_acc {val_acc:.4f}",
                  flush=True)

    # the official loop counts ceil(50,000 / 32) = 1,563 steps an epoch from the repeated stream
    steps = -(-len(data.train.y) // 32)
    with open(a.out, "w") as out:
        net.fit(train, epochs=a.epochs, steps_per_epoch=steps, verbose=0, callbacks=[Record()])


if __name__ == "__main__":
    main(sys.argv[1:])
