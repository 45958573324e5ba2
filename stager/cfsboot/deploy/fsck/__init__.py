"""`cfsboot fsck`: check a physical root (repository, state, ESP) and repair what is safe.

run.py runs it; state.py and esp.py are the state's and the ESP's checks (the
repository's live in cfsboot.composefs.repocheck and cfsboot.image.recordcheck);
repair.py and refetch.py repair; report.py is what it says, as text and JSON.
"""
