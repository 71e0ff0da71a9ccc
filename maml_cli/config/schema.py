"""The structured configs Hydra validates every run against.

Each config group has a dataclass here; the YAML files under ``configs/`` name it in their
``defaults`` list, so a misspelt key or a value of the wrong type fails at composition with the
key's full name. Value ranges that a type cannot express (``shots >= 1`` and the like) are
checked by :mod:`maml_cli.config.validate`.

Keys here are public API: later features and users' scripts rely on their names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from maml_cli.config.datasets import DATASET_SCHEMAS, DatasetConfig


class TaskBatchingChoice(str, Enum):
    auto = "auto"
    vmap = "vmap"
    loop = "loop"


class PrecisionChoice(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class Schedule(str, Enum):
    constant = "constant"
    cosine = "cosine"
    linear = "linear"


# -- dataset: the schemas of each task distribution are in config/datasets.py ---------------


# -- inner loop (the algorithm) ----------------------------------------------------------------


@dataclass
class InnerLoopConfig:
    """The meta-learning algorithm: ``_target_`` is its class, the rest its arguments."""

    _target_: str = "maml_cli.algorithms.maml.MAML"
    steps: int = 1
    lr: float = 0.01
    first_order: bool = False
    eval_steps: int = 10
    task_batching: TaskBatchingChoice = TaskBatchingChoice.auto
    task_chunk: int = 0  # with vmap: tasks adapted at once (0 = whole meta-batch)
    zero_head: bool = False  # every task starts from a zero head (Kao et al. 2022's zeroing trick)
    grad_clip: float | None = None  # bound each task's inner gradient norm at every inner step (None = off)
    adapt: list[str] | None = None  # parameter-name patterns the inner loop adapts (None = all trainable ones)


@dataclass
class AnilConfig(InnerLoopConfig):
    _target_: str = "maml_cli.algorithms.anil.ANIL"
    head: str | None = None  # submodule adapted in the inner loop; None = the last with parameters


@dataclass
class MetaSgdConfig(InnerLoopConfig):
    _target_: str = "maml_cli.algorithms.metasgd.MetaSGD"
    # alpha (a learned rate per adapted entry) starts at one draw from U[low, high]; None = at lr
    lr_init_range: tuple[float, float] | None = (0.005, 0.1)


@dataclass
class ReptileConfig(InnerLoopConfig):
    """Reptile (Nichol et al., 2018): SGD/Adam on support minibatches; .grad = theta - mean phi."""

    _target_: str = "maml_cli.algorithms.reptile.Reptile"
    steps: int = 5  # inner optimizer steps per task (the paper's k)
    lr: float = 0.001  # the inner optimizer's learning rate
    first_order: bool = True  # Reptile never differentiates through its inner loop; false is an error
    eval_steps: int = 50
    optimizer: str = "adam"  # the inner optimizer: adam or sgd
    betas: tuple[float, float] = (0.0, 0.999)  # Adam's; the paper uses beta1 = 0
    eps: float = 1e-8  # Adam's epsilon
    inner_batch_size: int = 0  # support examples per inner step (0 = the whole support set)
    eval_inner_batch_size: int | None = None  # the same at validation/evaluation (None = inner_batch_size)
    seed: int = 0  # seeds the minibatch order with the meta-step; reptile.yaml sets it to ${seed}


@dataclass
class MamlppConfig(InnerLoopConfig):
    """MAML++ (Antoniou et al., 2019): each of its training tricks is a flag of its own."""

    _target_: str = "maml_cli.algorithms.mamlpp.MAMLPlusPlus"
    msl: bool = True  # multi-step loss: weighted query losses after every inner step
    msl_steps: int = 5000  # meta-steps over which MSL anneals to the last step (then last step only)
    lslr: bool = True  # learned per-layer, per-step inner learning rates (initialised to lr)
    bnwb: bool = True  # per-step batch-norm weights and biases (meta-learned, not adapted)
    bnrs: bool = True  # per-step batch-norm running statistics
    bn_momentum: float = 0.1  # running-statistics momentum
    bn_eval_stats: str = "batch"  # batch or running: what evaluation normalises with
    first_order_steps: int = 0  # derivative-order annealing: first order for this many meta-steps


@dataclass
class IMAMLConfig(InnerLoopConfig):
    _target_: str = "maml_cli.algorithms.imaml.IMAML"
    lam: float = 2.0  # proximal regulariser (lam/2)||phi - theta||^2 of the inner problem
    cg_steps: int = 5  # conjugate-gradient iterations (Hessian-vector products) per task
    cg_damping: float = 0.0  # solve ((1 + damping) I + H/lam) g = grad L_query
    cg_tol: float = 0.0  # stop a task's CG at this relative residual (0 = run all cg_steps)


@dataclass
class MamlRlConfig(InnerLoopConfig):
    """MAML-RL (:class:`maml_cli.rl.maml_rl.MAMLRL`): policy-gradient inner steps, TRPO outer loop."""

    _target_: str = "maml_cli.rl.maml_rl.MAMLRL"
    steps: int = 1
    lr: float = 0.1  # the inner policy-gradient step size (the paper: 0.1)
    eval_steps: int = 3  # the paper's Figure 4 adapts up to 3 steps
    outer: str = "trpo"  # trpo (the paper; with optimizer=sgd optimizer.lr=1) or pg (any optimizer)
    max_kl: float = 0.01  # TRPO's trust region: mean KL of the adapted policies
    cg_iters: int = 10
    cg_damping: float = 1e-5
    ls_max_steps: int = 15
    ls_backtrack: float = 0.8
    fisher: str = "exact"  # exact (through the inner step, as the paper's code) or first_order (cheaper)
    gamma: float = 0.99
    gae_lambda: float = 1.0
    pretrain: bool = False  # one policy for all tasks, no adaptation in training: the paper's pretrained baseline


#: Each ``configs/inner_loop/<name>.yaml`` names ``<name>_schema`` in its defaults list.
INNER_LOOP_SCHEMAS: dict[str, type] = {
    "maml": InnerLoopConfig,
    "anil": AnilConfig,
    "metasgd": MetaSgdConfig,
    "mamlpp": MamlppConfig,
    "imaml": IMAMLConfig,
    "reptile": ReptileConfig,
    "maml_rl": MamlRlConfig,
}


# -- meta-optimizer ----------------------------------------------------------------------------


@dataclass
class OptimizerConfig:
    """The outer (meta) optimizer: ``_target_`` is a ``torch.optim`` class, plus its schedule."""

    _target_: str = MISSING
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: Schedule = Schedule.constant
    min_lr: float = 0.0  # the cosine or linear schedule's final learning rate
    warmup_steps: int = 0  # linear warm-up before the schedule


@dataclass
class AdamConfig(OptimizerConfig):
    _target_: str = "torch.optim.Adam"
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8


@dataclass
class AdamWConfig(AdamConfig):
    _target_: str = "torch.optim.AdamW"
    weight_decay: float = 0.01


@dataclass
class SGDConfig(OptimizerConfig):
    _target_: str = "torch.optim.SGD"
    momentum: float = 0.0
    nesterov: bool = False


# -- trainer -----------------------------------------------------------------------------------


@dataclass
class TrainerConfig:
    max_steps: int = 70_000  # meta-iterations (outer steps)
    max_minutes: float | None = None  # also stop after this much wall time (validation included)
    meta_batch_size: int = 25  # tasks per meta-iteration
    val_every: int = 1_000  # steps between validations (and best.pt updates)
    val_tasks: int = 100  # fixed held-out tasks per validation
    ckpt_every: int = 1_000  # steps between last.pt writes
    log_every: int = 50  # steps between TensorBoard/progress-bar updates
    device: str = "auto"  # cpu, cuda, cuda:N, or auto (cuda when available)
    resume: str | None = None  # a checkpoint path, or auto for this run dir's last.pt
    init_from: str | None = None  # start from another run's checkpoint: its model only, fresh optimizer and step
    grad_clip: float | None = None  # clip the meta-gradient's global norm
    progress: bool | None = None  # tqdm bar; None = only when stderr is a terminal
    figures: bool = True  # task-specific figures (sinusoid: adapted curves) at validation
    keep_top_k: int = 0  # also keep the k best validated checkpoints in checkpoints/top/ (for ensembles)
    num_threads: int | None = None  # torch's CPU threads; None = 1 for models without convolutions, else all cores
    distributed_timeout_s: float = 600.0  # under torchrun: a collective waiting longer ends the job (a rank died)
    precision: PrecisionChoice = PrecisionChoice.fp32  # forward passes in fp32, bf16 or fp16 (CUDA only); fp32 weights


@dataclass
class TrainConfig:
    seed: int = 0
    dataset: DatasetConfig = MISSING
    model: Any = MISSING  # any nn.Module by _target_: no schema, the constructor checks
    optimizer: OptimizerConfig = MISSING
    inner_loop: InnerLoopConfig = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


# -- evaluation --------------------------------------------------------------------------------


@dataclass
class EvalConfig:
    episodes: int = 600  # held-out tasks to evaluate on
    steps: int | None = None  # inner steps at test time; None = the run's inner_loop.eval_steps
    split: str = "test"  # val or test
    output: str | None = None  # eval.json path; None = the eval run dir
    batch_size: int = 100  # tasks adapted together
    ensemble_top_k: int = 1  # >1: average the predictions of the run's k best validated checkpoints
    # Also score these, on the same tasks and adapted the same way: "random" (the run's model freshly
    # initialised from its seed) or the path of another run's checkpoint of the same model (a pretrained one).
    baselines: list[str] = field(default_factory=list)
    num_threads: int | None = None  # torch's CPU threads; None = as trainer.num_threads's default


@dataclass
class EvalAppConfig:
    """maml-eval's own keys; the run's config comes from the checkpoint (see ``cli/evaluate``)."""

    checkpoint: str = MISSING
    eval: EvalConfig = field(default_factory=EvalConfig)


def register_configs() -> None:
    """Put the schemas in Hydra's ConfigStore, where the YAML files' defaults lists find them."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    for name, node in DATASET_SCHEMAS.items():
        cs.store(group="dataset", name=name, node=node)
    for name, node in INNER_LOOP_SCHEMAS.items():
        cs.store(group="inner_loop", name=f"{name}_schema", node=node)
    cs.store(group="optimizer", name="adam_schema", node=AdamConfig)
    cs.store(group="optimizer", name="adamw_schema", node=AdamWConfig)
    cs.store(group="optimizer", name="sgd_schema", node=SGDConfig)
    cs.store(group="trainer", name="trainer_schema", node=TrainerConfig)
    cs.store(name="eval_schema", node=EvalAppConfig)
