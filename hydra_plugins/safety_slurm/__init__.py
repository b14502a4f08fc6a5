"""`cluster=slurm`: hydra-submitit-launcher with re-queued trials for jobs that end without a result."""
