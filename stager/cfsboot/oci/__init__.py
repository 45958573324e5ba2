"""OCI images: references, layouts, archives, registries, layer tarballs and records."""

# apply.py may run compiled (composefs/native.py): whether it does is decided when
# cfsboot.composefs is imported, which must be before apply loads.
import cfsboot.composefs  # noqa: F401
