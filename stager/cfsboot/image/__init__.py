# layerread.py may run compiled (composefs/native.py): whether it does is decided when
# cfsboot.composefs is imported, which must be before layerread loads.
import cfsboot.composefs  # noqa: F401
