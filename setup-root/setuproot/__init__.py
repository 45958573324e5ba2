"""setup-root: turn the physical root at /sysroot into a booted composefs deployment.

Standard library only: this package is frozen into the initramfs.
"""
