"""Training: `narvl train` (main), `narvl export`, `narvl distill`, `narvl bench train`.

    launch      torchrun self-launch, srun -> torch.distributed environment mapping
    config      batch checks, the DeepSpeed config, the warm-up + cosine schedule
    engine      DeepSpeed engine, the NAR/AR objectives, validation
    checkpoint  checkpoint layout, completeness markers, compatibility checks, per-rank state
"""
