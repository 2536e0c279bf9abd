"""Training configuration derived from `params/train.yaml`: batch checks, the DeepSpeed config, the LR schedule.

Nothing here imports DeepSpeed, so the checks run before any work (and before torchrun starts the ranks).
"""

from __future__ import annotations

import math
from typing import Any

from narvl.errors import NarvlError
from narvl.params import TrainParams

PRETRAIN = "pretrain"  # `narvl train --task pretrain`: the multi-task AR stage (train.pretrain)


def check_batch(train: TrainParams, world_size: int, where: str) -> None:
    """micro_batch x grad_accum x world size must equal global_batch."""
    for key in ("micro_batch", "grad_accum", "global_batch"):
        if getattr(train, key) < 1:
            raise NarvlError(f"{where}: train.{key} = {getattr(train, key)} must be at least 1")
    product = train.micro_batch * train.grad_accum * world_size
    if product != train.global_batch:
        raise NarvlError(
            f"{where}: inconsistent batch settings: train.micro_batch ({train.micro_batch}) x train.grad_accum "
            f"({train.grad_accum}) x world size ({world_size}) = {product}, but train.global_batch is "
            f"{train.global_batch}")


def check_pretrain_params(train: TrainParams, where: str) -> None:
    """train.pretrain: at least one step, weights that are not negative and not all zero, a val split per task."""
    pre = train.pretrain
    if pre.steps < 1:
        raise NarvlError(f"{where}: train.pretrain.steps = {pre.steps} must be at least 1")
    bad = {t: w for t, w in pre.weights.items() if not w >= 0}
    if bad or not any(w > 0 for w in pre.weights.values()):
        raise NarvlError(f"{where}: train.pretrain.weights = {dict(pre.weights)}: every weight must be 0 or more "
                         f"and one at least positive")
    if not pre.region >= 0:
        raise NarvlError(f"{where}: train.pretrain.region = {pre.region} must be 0 or more")
    for task, w in pre.weights.items():
        if w > 0 and task not in train.val_split:
            raise NarvlError(f"{where}: train.val_split has no entry for task '{task}' (train.pretrain.weights)")


def check_train_params(train: TrainParams, task: str | None, world_size: int, cuda: bool, where: str) -> None:
    """Every train.* value this run uses, checked before any work (task None: the multi-task stage's)."""
    check_batch(train, world_size, where)
    if task is None:  # the multi-task stage (--task pretrain)
        check_pretrain_params(train, where)
    else:
        if task not in train.steps:
            raise NarvlError(f"{where}: train.steps has no entry for task '{task}' (has: {', '.join(train.steps)})")
        if train.steps[task] < 1:
            raise NarvlError(f"{where}: train.steps.{task} = {train.steps[task]} must be at least 1")
        if task not in train.val_split:
            raise NarvlError(f"{where}: train.val_split has no entry for task '{task}'")
    if train.zero_stage not in (0, 1, 2, 3):
        raise NarvlError(f"{where}: train.zero_stage = {train.zero_stage} is not one of 0, 1, 2, 3")
    if train.precision == "fp16" and not cuda:
        raise NarvlError(f"{where}: train.precision = fp16 needs a GPU (DeepSpeed refuses fp16 on the CPU); "
                         "use bf16 or fp32")
    for key in ("checkpoint_every", "log_every", "keep_checkpoints", "val_batches"):
        if getattr(train, key) < 1:
            raise NarvlError(f"{where}: train.{key} = {getattr(train, key)} must be at least 1")
    if train.val_every < 0 or train.warmup_steps < 0 or train.frozen_feature_cache_mb < 0:
        raise NarvlError(f"{where}: train.val_every, train.warmup_steps and train.frozen_feature_cache_mb must not be "
                         "negative")
    if not 0.0 <= train.min_lr_ratio <= 1.0:
        raise NarvlError(f"{where}: train.min_lr_ratio = {train.min_lr_ratio} must lie in [0, 1]")
    if train.lr <= 0:
        raise NarvlError(f"{where}: train.lr = {train.lr} must be positive")
    if train.loc_sigma < 0 or train.loc_l1_weight < 0:
        raise NarvlError(f"{where}: train.loc_sigma = {train.loc_sigma} and train.loc_l1_weight = "
                         f"{train.loc_l1_weight} must not be negative")


def deepspeed_config(train: TrainParams) -> dict[str, Any]:
    """The resolved DeepSpeed config (written beside the checkpoints as ds_config.json).

    The optimizer (torch AdamW) and the schedule are passed as objects, not named here: DeepSpeed's own fused Adam
    compiles a C++ op on first use (~50 s on the CPU).
    """
    config = {
        "train_batch_size": train.global_batch,
        "train_micro_batch_size_per_gpu": train.micro_batch,
        "gradient_accumulation_steps": train.grad_accum,
        "gradient_clipping": train.grad_clip,
        "zero_optimization": {"stage": train.zero_stage},
        "bf16": {"enabled": train.precision == "bf16"},
        "fp16": {"enabled": train.precision == "fp16", "initial_scale_power": 16, "loss_scale_window": 1000},
        "zero_allow_untested_optimizer": True,  # torch's AdamW under ZeRO 1-3
        "steps_per_print": 1 << 30,  # narvl logs; DeepSpeed stays quiet
        "wall_clock_breakdown": False,
    }
    if train.precision != "fp32":
        # buffers (the ResNet's BatchNorm statistics) follow the weights; DeepSpeed otherwise keeps them in fp32
        config["data_types"] = {"buffer_dtype": train.precision}
    return config


class WarmupCosine:
    """LR multiplier at optimizer step s: linear warm-up to 1 over `warmup` steps, then cosine to `min_ratio`.

    A class (not a closure) so that LambdaLR can save it in the checkpoint.
    """

    def __init__(self, warmup: int, total: int, min_ratio: float):
        self.warmup, self.total, self.min_ratio = warmup, total, min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        span = max(1, self.total - self.warmup)
        progress = min(1.0, (step - self.warmup) / span)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
