"""Plan: read the processing manifest, emit the FM and k-NN hyperparameters (all strings)."""
