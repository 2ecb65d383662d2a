"""Search your own sounds: decoding by content, the index cache, the vector indexes, the retrieval API,
the command line (``python -m salsa_lib.search``, in cli.py) and the notebook-05 demo (its model menu in
menu.py). Any model file works: ours or the authors' released checkpoint.

May import salsa_lib.data, salsa_lib.core and the plumbing modules: never the stages or a training
framework, so a query loads neither (lint-imports checks it; contracts in pyproject.toml).
"""
