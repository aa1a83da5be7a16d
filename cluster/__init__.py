"""Running bertline on Slurm: `bertline submit` (submit.py) renders sbatch.sh.j2; local_slurm.sh starts a one-node cluster."""
