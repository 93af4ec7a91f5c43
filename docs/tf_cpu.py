"""TensorFlow for the docs scripts that check rbd-hpc against the official framework
(keras_sgd.py, tf_rbd_step.py). rbd-hpc does not install it: ``pip install tensorflow-cpu`` in
a separate virtual environment that also has rbd-hpc, since TensorFlow pins other versions of
h5py."""
import sys


def tensorflow(prog: str, threads: int):
    """TensorFlow on ``threads`` threads; one line and exit 1 where it is not installed."""
    try:
        import tensorflow as tf
    except ImportError:
        sys.exit(f"{prog}: needs TensorFlow (pip install tensorflow-cpu), which is not "
                 "installed here")
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    return tf
