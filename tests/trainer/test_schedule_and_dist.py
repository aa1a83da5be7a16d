import pytest

from trainer.dist import first_host, placement
from trainer.schedule import learning_rate


def test_warmup_then_each_decay():
    args = dict(peak=1e-3, warmup_steps=10, total_steps=110)
    assert learning_rate(0, **args) == pytest.approx(1e-4)
    assert learning_rate(9, **args) == pytest.approx(1e-3)
    assert learning_rate(60, **args) == pytest.approx(5e-4)  # linear, halfway
    assert learning_rate(110, **args) == pytest.approx(0.0) and learning_rate(500, **args) == pytest.approx(0.0)
    assert learning_rate(60, **args, decay="cosine") == pytest.approx(5e-4)
    assert learning_rate(35, **args, decay="cosine") > learning_rate(35, **args)  # cosine stays high early
    assert learning_rate(60, **args, decay="polynomial", power=2.0) == pytest.approx(2.5e-4)
    assert learning_rate(110, **args, end_fraction=0.1) == pytest.approx(1e-4)
    assert learning_rate(70, **args, decay="constant") == 1e-3


def test_placement_from_each_launcher():
    torchrun = placement({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "n1", "MASTER_PORT": "1234"})
    assert (torchrun.rank, torchrun.world_size, torchrun.local_rank, torchrun.master_addr, torchrun.launcher) == (3, 4, 1, "n1", "torchrun")
    slurm = placement({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "4242"})
    assert (slurm.rank, slurm.world_size, slurm.local_rank, slurm.launcher) == (5, 8, 1, "slurm")
    assert slurm.master_port == 24242 and slurm.environment()["RANK"] == "5"
    single = placement({})
    assert (single.rank, single.world_size, single.launcher) == (0, 1, "single") and single.master_port > 0


@pytest.mark.parametrize("nodelist,host", [("node[03-05,7],gpu1", "node03"), ("gpu1,gpu2", "gpu1"), ("solo", "solo")])
def test_first_host_of_a_nodelist(nodelist, host, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")  # parse without scontrol
    assert first_host(nodelist) == host
