"""composefs: trees, dumpfiles, EROFS images, fs-verity, the object store and the repository."""

from cfsboot.composefs import native as _native

# The hot modules may run compiled (native.py): decide once, before any of them loads.
_native.select()
