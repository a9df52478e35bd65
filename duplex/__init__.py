"""duplex: Kubernetes-native serving for full-duplex conversation models.

The top-level folders of the repository are the components of the design (see README.md); each is mapped
to a ``duplex.*`` import path in pyproject.toml.
"""

__version__ = "0.1.0"
