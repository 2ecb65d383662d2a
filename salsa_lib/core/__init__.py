"""The model core: encoders, the dual encoder, losses, metrics, checkpoints, caption normalisation.

May import only the plumbing modules of salsa_lib (config, errors, quiet, ...): never the data layer,
search, the stages or a training framework (lint-imports checks it; contracts in pyproject.toml).
"""
