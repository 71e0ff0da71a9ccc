"""Writing to the Hydra job's log file alone (``train.log``, ``evaluate.log``).

What a CLI prints for a person (a results table, an error line) belongs in the run's log too,
but sending it through ``logging`` would print it a second time, decorated, on the console.
"""

from __future__ import annotations

import logging


def log_to_file(text: str, level: int = logging.INFO, name: str = "maml_cli") -> None:
    """Emit ``text`` to every file handler of the root logger (Hydra's job log), nowhere else."""
    record = logging.getLogger(name).makeRecord(name, level, __file__, 0, text, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
