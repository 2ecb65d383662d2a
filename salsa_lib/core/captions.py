"""Caption normalisation, shared by the text encoder, the data splits and the search.

It lives in the core because the text encoder and the search need it and must not import the data
layer; salsa_lib.data.splits imports it from here.
"""

import string

_STRIP_PUNCTUATION = str.maketrans("", "", string.punctuation)


def preprocess_caption(text: str) -> str:
    """SALSA's caption normalisation: lowercase, ASCII punctuation removed, exactly as the original.

    Whitespace is kept as it is (double and trailing spaces too): RoBERTa's byte-level tokenizer turns
    it into tokens, and the original fed the text to it unchanged.
    """
    return str(text).lower().translate(_STRIP_PUNCTUATION)
