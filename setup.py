from setuptools import find_packages, setup

setup(
    name="gmr",
    version="0.1.0",
    description="Gumbel-Matrix routing and learned parameter sharing for multi-task networks (JAX/Flax)",
    # the library alone: experiments/ (entry point, configs, report) and launch/ (sweeps,
    # tables) run from the checkout (python -m experiments.main ..., as flax's examples do), so
    # no top-level package with a name as common as "experiments" or "launch" is installed
    packages=find_packages(include=["gmr", "gmr.*"]),
    license="Apache-2.0",
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.10",  # the versions CI tests: jax 0.10, flax 0.12, optax 0.2.8
        "flax>=0.10",
        "optax>=0.2.3",
        "tensorflow-datasets>=4.9",
        "ml-collections>=0.1.1",
        "absl-py>=2.0",
        "numpy",
        # gmr.analysis: Student-t quantiles (scipy.stats), average-linkage clustering
        # (scipy.cluster.hierarchy); jax depends on scipy too
        "scipy",
        # tfds' builders import importlib_resources when TensorFlow is absent; Pillow decodes
        # Omniglot's PNGs (the field's standard image library)
        "importlib_resources",
        # checkpoints: the JAX ecosystem's standard (atomic saves, keep-last-N, best-by-metric)
        "orbax-checkpoint",
        "pillow",
        # figures of experiments.report (the field's standard plotting library)
        "matplotlib",
        # sweeps on Slurm (job arrays, requeue on preemption and time limits)
        "submitit",
    ],
    extras_require={
        # the tour notebook runs in the tests (nbclient executes it in an ipykernel); the
        # TensorBoard events are checked (tensorboardX writes them)
        "test": ["pytest>=8", "pytest-xdist>=3", "nbclient", "nbformat", "ipykernel",
                 "tensorboardX"],
        # writing the event files, and TensorBoard itself to view them
        "tensorboard": ["tensorboardX", "tensorboard"],
    },
)
