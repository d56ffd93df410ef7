"""What the terminal of `lc train`, `lc study` and `lc predict` shows: progress and results.

Library chatter is dropped by name, nothing wider; every other log line and warning passes:
- Lightning's start-up lines that repeat in every trial: GPU/TPU availability (the run's device
  and precision are tagged in MLflow), its tips advertising other logging and model services,
  the `limit_*_batches` and "Loading `train_dataloader` to estimate" notes, and "Seed set to"
  (the seed is a logged parameter).
- torch's FutureWarning about ``LeafSpec``, raised from Lightning's own use of torch's pytree API:
  nothing a user of this project can change.
- Optuna's ExperimentalWarning for TPE's ``group`` argument, chosen on purpose in
  ``lc.tracking.storage``.
"""

from __future__ import annotations

import logging
import warnings

LIGHTNING_CHATTER = ("GPU available:", "TPU available:", "💡 Tip:", "Seed set to", "Loading `train_dataloader` to estimate")
LIGHTNING_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                     "lightning.fabric.utilities.seed")


class _DropChatter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("`Trainer(limit_") and "was configured so" in message:
            return False
        return not message.startswith(LIGHTNING_CHATTER)


_FILTER = _DropChatter()


def quiet_libraries() -> None:
    """Drop the library chatter listed above (idempotent)."""
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r"Argument ``group`` is an experimental feature")
