import pytest

from bertline.errors import UserError

from trainer.dist import expand_nodelist, first_host, placement, slurm_port
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
    assert slurm.master_port == 19242 and slurm.environment()["RANK"] == "5"
    single = placement({})
    assert (single.rank, single.world_size, single.launcher) == (0, 1, "single") and single.master_port > 0


@pytest.mark.parametrize("nodelist,host", [
    ("node[03-05,7],gpu1", "node03"), ("gpu1,gpu2", "gpu1"), ("solo", "solo"), ("gpu[01-02]-ib", "gpu01-ib"),
    ("rack[1-2]-n[01-04]", "rack1-n01"), ("a-[9-10]x,b", "a-9x"), ("[2-3]gpu", "2gpu"),
])
def test_first_host_of_a_nodelist(nodelist, host, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")  # parse without scontrol
    assert first_host(nodelist) == host


def test_nodelists_expand_as_scontrol_does():
    assert expand_nodelist("gpu[01-02]-ib") == ["gpu01-ib", "gpu02-ib"]
    assert expand_nodelist("rack[1-2]-n[01-02]") == ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"]
    assert expand_nodelist("node[08-10,7],login") == ["node08", "node09", "node10", "node7", "login"]
    assert len(expand_nodelist("n[0001-1024]")) == 1024
    with pytest.raises(UserError, match=r"node list 'node\[a-b\]': 'a-b' is not a number or a range"):
        expand_nodelist("node[a-b]")


def test_slurm_port_stays_below_the_ephemeral_range(monkeypatch):
    ports = {slurm_port(job) for job in range(0, 10**6, 7)}
    assert min(ports) >= 15000 and max(ports) < 32768
    assert placement({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_ID": "9", "MASTER_PORT": "12345"}).master_port == 12345


@pytest.mark.parametrize("samples,micro,world", [(80, 8, 1), (80, 8, 3), (2048, 64, 8), (100, 64, 4), (10, 4, 8)])
def test_eval_covers_the_same_samples_for_any_world_size(samples, micro, world):
    from trainer.evaluate import eval_spans

    plans = [eval_spans(samples, micro, world, rank) for rank in range(world)]
    assert len({len(plan) for plan in plans}) == 1  # every rank runs the same number of forwards (ZeRO-3)
    counted = sorted(i for plan in plans for start, stop, kept in plan if kept for i in range(start, stop))
    assert counted == list(range(samples))


def test_waiting_for_a_universal_conversion(tmp_path):
    from trainer.checkpoint import UNIVERSAL_FAILED, wait_for_universal

    step = tmp_path / "step00000004"
    step.mkdir()
    with pytest.raises(UserError, match=r"waited 0 minutes for rank 0 to convert .*step00000004 .*raise checkpoint.universal_wait_minutes"):
        wait_for_universal(step, timeout_s=0.2, poll_s=0.05)
    (step / UNIVERSAL_FAILED).write_text("ds_to_universal: out of disk space\n")
    with pytest.raises(UserError, match=r"rank 0 could not convert .*\(ds_to_universal: out of disk space\); see rank 0's log"):
        wait_for_universal(step, timeout_s=5, poll_s=0.05)
    (step / "universal").mkdir()
    assert wait_for_universal(step, timeout_s=5) == step / "universal"


@pytest.mark.parametrize("nodelist", ["node[5-3]", "node[5-]", ",", ""])
def test_a_nodelist_that_names_no_host_is_one_sentence(nodelist):
    with pytest.raises(UserError, match=r"Slurm node list .*set MASTER_ADDR to the first node's name"):
        expand_nodelist(nodelist)


def test_each_rank_gets_a_gpu_of_its_own():
    from trainer.engine import gpu_index

    assert [gpu_index(rank, 8, 8) for rank in range(8)] == list(range(8))  # --gpu-bind=none: all visible
    assert gpu_index(5, 1, 8) == 0  # --gpu-bind=single:1 / --gpus-per-task=1: its own
    with pytest.raises(UserError, match=r"local rank 4 sees 4 GPUs for 8 ranks on its node: two ranks would share a GPU"):
        gpu_index(4, 4, 8)  # --gpu-bind=closest on a two-socket node
    with pytest.raises(UserError, match=r"two ranks would share a GPU"):
        gpu_index(0, 4, 8)
