"""cfsboot: import OCI images into a composefs repository and boot them."""

__version__ = "0.1.0"
