"""The pipeline's stages: pretraining, training (Lightning), stage 1, embeddings, correspondences,
stage 2, evaluation, the verdict and the released checkpoint.

May import salsa_lib.search, salsa_lib.data, salsa_lib.core and the plumbing modules; only the
runner, readiness and the old command names sit above (lint-imports checks it).
"""
