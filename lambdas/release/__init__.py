"""Release: give the pipeline lock back, only if this run holds it."""
