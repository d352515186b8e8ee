"""Repackage: the FM model -> item vectors (k-NN training set) and user vectors (inference set)."""
