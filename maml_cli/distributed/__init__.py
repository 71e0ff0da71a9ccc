"""Data-parallel meta-training under ``torchrun``: one run, its meta-batch shared out over processes.

``torchrun --nproc_per_node=N $(which maml-train) ...`` (and ``--nnodes`` for several machines)
trains one run with ``N`` processes (*ranks*): each adapts ``trainer.meta_batch_size / N`` of the
meta-batch's tasks, the meta-gradients are averaged over the ranks, and every rank takes the same
optimizer step. Rank 0 writes the run dir; the others write nothing.

- :mod:`.launch`: the ranks' environment, what they do before Hydra starts, how they report errors;
- :mod:`.world`: the trainer's hooks (:class:`maml_cli.engine.world.SingleProcess`) for a process group;
- :mod:`.buffers`: batch-norm running statistics combined as one process would have them.
"""

from maml_cli.distributed.launch import Launch, before_hydra, follower_run_dir, is_follower, launch, report_rank_errors
from maml_cli.distributed.world import DistributedError, ProcessGroupWorld, joined
from maml_cli.engine.world import NullWriter, SingleProcess

__all__ = [
    "DistributedError",
    "Launch",
    "NullWriter",
    "ProcessGroupWorld",
    "SingleProcess",
    "before_hydra",
    "follower_run_dir",
    "is_follower",
    "joined",
    "launch",
    "report_rank_errors",
]
