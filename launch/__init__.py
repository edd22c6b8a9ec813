"""Launchers: ``launch.slurm`` (sbatch jobs and job arrays), ``launch.local`` (torchrun on this
machine) and ``launch.worker`` (what every training process runs under torchrun)."""
