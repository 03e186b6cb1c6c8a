"""Installs the ``rethink_d2`` package. Detectron2 itself is installed by the Makefile (see README)."""
import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def read_version():
    """Return ``__version__`` from ``rethink_d2/__init__.py`` without importing the package."""
    with open(os.path.join(HERE, "rethink_d2", "__init__.py")) as f:
        for line in f:
            if line.startswith("__version__"):
                return line.split("=")[1].strip().strip('"')
    raise RuntimeError("rethink_d2/__init__.py defines no __version__")


# Versions the project is tested with; docker/Dockerfile pins the same ones (checked by a test).
TORCH_VERSION = "2.14.1"
TORCHVISION_VERSION = "0.29.1"

setup(
    name="rethink-d2",
    version=read_version(),
    description="Train Detectron2 detectors from random initialization (Rethinking ImageNet Pre-training)",
    long_description=open(os.path.join(HERE, "README.md")).read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["rethink_d2", "rethink_d2.*"]),
    # configs/ is reachable as rethink_d2/configs (a symlink in the repository, a copy in a wheel)
    package_data={"rethink_d2": ["configs/*.yaml", "configs/*/*.yaml"]},
    include_package_data=True,
    install_requires=[
        f"torch>={TORCH_VERSION}",
        f"torchvision>={TORCHVISION_VERSION}",
        "numpy",
        "Pillow",
        "pycocotools",
        "matplotlib",
        "fvcore",
        "iopath",
        # Detectron2 is not on PyPI under its own name: the Makefile installs it (see README).
    ],
    extras_require={"test": ["pytest>=7", "pytest-timeout"]},
)
