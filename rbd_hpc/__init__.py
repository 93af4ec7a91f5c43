"""rbd_hpc: training neural networks in low-dimensional random bases, on HPC clusters."""

__version__ = "0.1.0"
