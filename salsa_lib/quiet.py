"""Third-party noise, silenced narrowly and in one place.

Each filter names the package and the message it hides, so warnings raised by our own code (and any
other warning of these packages) still reach the reader. Entry points call ``silence_third_party_noise``
(model building, training, the search command); nothing happens at import.
"""

from __future__ import annotations

import logging
import os
import warnings

# (category, message pattern, module that issues it): deprecation notices of dependencies we cannot fix
_THIRD_PARTY_WARNINGS = (
    # hear21passt's mel front end calls torch.stft(return_complex=False)
    (UserWarning, r"stft with return_complex=False is deprecated", r"torch\.functional"),
    # hear21passt's mel front end uses torch.cuda.amp.autocast
    (FutureWarning, r".*torch\.cuda\.amp\.autocast", r"hear21passt\..*"),
    # Lightning's pytree helpers check isinstance(..., LeafSpec), deprecated in torch
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated", r""),
)

# Lightning's banners ("GPU available ...", tips advertising cloud services) are logged at INFO here;
# its warnings use the same logger at WARNING and still show.
_CHATTY_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")

# Set in the kernels the runner starts: nobody watches a headless run, and a progress bar saved in an
# executed notebook is noise (tqdm's widget leaves its first frame, "0%", as the cell's text).
HEADLESS_VARIABLE = "SALSA_HEADLESS"

# The notebook kernel's own start-up log ("running over TCP without encryption" on a loopback
# connection the runner itself opens) is silenced; cell output and our warnings are unaffected. The
# kernel marks itself headless before any cell runs (without adding a name to the notebook's namespace).
KERNEL_ARGUMENTS = ["--IPKernelApp.log_level=ERROR",
                    f"--IPKernelApp.exec_lines=__import__('os').environ.__setitem__('{HEADLESS_VARIABLE}', '1')"]


def progress_visible() -> bool:
    """Whether a progress bar has a reader: False inside a notebook the runner executes headlessly.

    Interactive use (JupyterLab, a terminal) keeps its bars; callers still pass ``progress=False`` to
    hide one for other reasons.
    """
    return os.environ.get(HEADLESS_VARIABLE) != "1"


def silence_third_party_noise() -> None:
    for category, message, module in _THIRD_PARTY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    from transformers.utils import logging as transformers_logging  # heavy import, only when models are built

    transformers_logging.disable_progress_bar()  # the "Loading weights" bar of every from_pretrained
