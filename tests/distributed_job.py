"""Run by tests/test_distributed.py under torchrun: train each case of a JSON file with all ranks.

``python -m torch.distributed.run --standalone --nproc_per_node=2 -m tests.distributed_job OUT CASES``
where CASES is ``{"name": [override, ...], ...}``: each case is composed as ``maml-train`` composes
it, joined as ``maml-train`` joins its ranks, and trained by a :class:`~maml_cli.engine.Trainer`
into ``OUT/<name>`` (rank 0 writes ``checkpoints/last.pt`` there, which the test compares with one
process's run). One job runs every case, so the processes start (import torch) and join once.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from maml_cli.distributed import joined
from maml_cli.engine import Trainer

from .helpers import compose_train


def main() -> None:
    out, cases = Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text())
    configs = {name: compose_train(*overrides) for name, overrides in cases.items()}
    with joined(next(iter(configs.values()))) as world:  # a process joins its ranks once
        assert world.size == 2, world.size
        for name, cfg in configs.items():
            Trainer(cfg, out / name, world).fit()


if __name__ == "__main__":
    main()
