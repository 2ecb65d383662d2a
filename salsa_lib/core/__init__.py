"""The model core: encoders, the dual encoder, losses, metrics, checkpoints (ours and the authors' released
one), caption normalisation, the Hugging Face cache the text models come from.

May import only the plumbing modules of salsa_lib (config, errors, quiet, ...): never the data layer,
search, the stages or a training framework (lint-imports checks it; contracts in pyproject.toml).
"""
