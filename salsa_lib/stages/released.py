"""The released checkpoint's loader lives in the model core (``salsa_lib.core.released``), where search
and the demo can use it too; this name stays for notebook 04 and existing imports."""

from salsa_lib.core.released import (  # noqa: F401
    RELEASED_CONFIG,
    build_released_model,
    check_hyperparameters,
    compare_hyperparameters,
    default_checkpoint_path,
    expected_hyperparameters,
    is_released_checkpoint,
    load_for_evaluation,
    load_released_checkpoint,
)
