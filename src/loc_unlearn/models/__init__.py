"""Models: loading/saving/building (load.py) and the per-architecture value-vector adapter
(value_vectors.py). Import the submodules directly; load.py pulls in transformers."""
