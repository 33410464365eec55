"""The trainer and its parts: schedule, sampler, checkpoints, resume, time budget, DDP."""

from __future__ import annotations

import json
import math
import os
import time
from itertools import islice
from pathlib import Path

import pytest
import torch

from panopticlab.weights import read_weights
from panopticlab.config import Config, from_dict
from panopticlab.data.build import InfiniteSampler, build_dataset, build_train_loader
from panopticlab.data.synthetic import ShapesConfig, generate_split
from panopticlab.engine import train
from panopticlab.engine.checkpointing import flatten_state, unflatten_state
from panopticlab.engine.schedule import lr_factor
from panopticlab.errors import InputError

from test_pd_model import TINY


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory) -> Path:
    """Tiny shapes splits: train (6 images) and val (3 images), 64 x 64."""
    root = tmp_path_factory.mktemp("shapes")
    generate_split(root, 6, ShapesConfig(height=64, width=64), seed=0, split="train", workers=1)
    generate_split(root, 3, ShapesConfig(height=64, width=64), seed=1, split="val", workers=1)
    return root


def tiny_config(root: Path, output_dir: Path, **sections) -> Config:
    data = {
        "model": TINY,
        "data": {"root": str(root), "train": {"folder": "train"}, "test": {"folder": "val"}, "num_workers": 0},
        "input": {"crop_size": [48, 48], "min_scale": 0.75, "max_scale": 1.25},
        "solver": {"max_iter": 6, "batch_size": 2, "warmup_iters": 2, "log_period": 1, "checkpoint_period": 3, "tensorboard": False},
        "output_dir": str(output_dir),
        "device": "cpu",
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return from_dict(Config, data)


def records(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


# --- schedule, state, sampler ---------------------------------------------------------------


def test_lr_factor_is_detectron2s_warmup_poly_and_multistep():
    poly = Config().solver  # warm-up 1000 from 0.001, poly 0.9 over 90k
    assert lr_factor(0, poly) == pytest.approx(0.001)
    assert lr_factor(500, poly) == pytest.approx((0.001 * 0.5 + 0.5) * (1 - 500 / 90_000) ** 0.9)
    assert lr_factor(1000, poly) == pytest.approx((1 - 1000 / 90_000) ** 0.9)
    assert lr_factor(89_999, poly) == pytest.approx((1 / 90_000) ** 0.9)
    step = from_dict(Config, {"solver": {"lr_scheduler": "step", "steps": [3, 6], "gamma": 0.1, "warmup_iters": 0}}).solver
    assert [lr_factor(i, step) for i in (0, 2, 3, 5, 6, 100)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_optimizer_state_survives_the_pickle_free_split():
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    state = optimizer.state_dict()
    tensors, structure = flatten_state(state)
    json.dumps(structure)  # the structure is plain JSON
    assert all(isinstance(t, torch.Tensor) for t in tensors.values()) and len(tensors) == 6  # step, exp_avg, exp_avg_sq x 2
    back = unflatten_state(json.loads(json.dumps(structure)), tensors)
    assert back["param_groups"][0]["betas"] == (0.9, 0.999) and set(back["state"]) == {0, 1}
    for k in (0, 1):
        assert all(torch.equal(back["state"][k][n], state["state"][k][n]) for n in state["state"][k])


def test_sampler_deals_one_shuffled_stream_and_resumes_mid_epoch():
    size = 5
    ranks = [list(islice(InfiniteSampler(size, seed=3, rank=r, world_size=2), 10)) for r in range(2)]
    stream = [pair for k in range(10) for pair in (ranks[0][k], ranks[1][k])]
    assert [p for _, p in stream] == list(range(20))  # positions interleave: 0, 1, 2, ...
    indices = [i for i, _ in stream]
    for epoch in range(4):
        assert sorted(indices[epoch * size : (epoch + 1) * size]) == list(range(size))
    assert indices[:size] != indices[size : 2 * size]  # a new permutation each epoch
    resumed = list(islice(InfiniteSampler(size, seed=3, rank=1, world_size=2, start=7), 3))
    assert resumed == ranks[1][7:10]


def test_augmentation_and_model_transform_do_not_depend_on_worker_processes(shapes_root, tmp_path):
    config = tiny_config(shapes_root, tmp_path)
    dataset = build_dataset(config, "train")

    def first_batches(workers: int, start_iter: int = 0) -> list:
        config.data.num_workers = workers
        loader = build_train_loader(config, dataset, model_transform=_tag_with_pid, start_iter=start_iter)
        return list(islice(iter(loader), 4))

    inline, pooled = first_batches(0), first_batches(2)
    for a, b in zip(inline, pooled):
        assert [item["image_id"] for item in a] == [item["image_id"] for item in b]
        assert all(torch.equal(x["image"], y["image"]) for x, y in zip(a, b))
    assert {item["pid"] for batch in inline for item in batch} == {os.getpid()}
    assert os.getpid() not in {item["pid"] for batch in pooled for item in batch}  # ran in the workers
    later = first_batches(2, start_iter=2)[0]
    assert all(torch.equal(x["image"], y["image"]) for x, y in zip(later, inline[2]))


def _tag_with_pid(item: dict) -> dict:
    return {**item, "pid": os.getpid()}


# --- training ---------------------------------------------------------------------------------


def test_a_few_steps_reduce_the_loss(shapes_root, tmp_path):
    # Whole images, no augmentation: each epoch (3 steps of 2 of the 6 images) sees the same data.
    config = tiny_config(
        shapes_root,
        tmp_path,
        input={"crop_size": [64, 64], "min_scale": 1.0, "max_scale": 1.0, "flip": False},
        solver={"max_iter": 12, "warmup_iters": 0, "base_lr": 0.003, "lr_scheduler": "step"},
    )
    result = train(config)
    losses = [r["loss"] for r in records(tmp_path)]
    assert len(losses) == 12 and result["iteration"] == 12
    assert sum(losses[-3:]) < 0.7 * sum(losses[:3])
    state, meta = read_weights(tmp_path / "model_final.safetensors")
    assert meta["iteration"] == "12" and state


def test_an_interrupted_run_resumed_ends_with_the_same_weights(shapes_root, tmp_path):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    train(tiny_config(shapes_root, straight))

    def crash(record: dict) -> None:
        if record["iteration"] == 5:  # after the checkpoint of iteration 3
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(shapes_root, broken), on_log=crash)
    assert (broken / "last_checkpoint").read_text().strip() == "checkpoint_0000003"
    with pytest.raises(InputError, match="--resume"):
        train(tiny_config(shapes_root, broken))
    # resumed with a worker process: the data stream must not depend on that either
    result = train(tiny_config(shapes_root, broken, data={"num_workers": 1}), resume=True)

    assert result["iteration"] == 6
    a, _ = read_weights(straight / "model_final.safetensors")
    b, _ = read_weights(broken / "model_final.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["iteration"] for r in records(broken)] == [1, 2, 3, 4, 5, 6]  # the crashed run's 4, 5 replaced
    assert [r["loss"] for r in records(broken)] == [r["loss"] for r in records(straight)]


def test_a_time_budget_stops_cleanly_with_weights_and_a_checkpoint(shapes_root, tmp_path):
    config = tiny_config(shapes_root, tmp_path, solver={"max_iter": 1000, "checkpoint_period": 500}, test={"eval_period": 500})
    result = train(config, max_minutes=1e-9)
    assert result["stopped_early"] and result["iteration"] == 1
    assert (tmp_path / "last_checkpoint").read_text().strip() == "checkpoint_0000001"
    assert (tmp_path / "model_final.safetensors").is_file()
    assert set(result["eval"]) >= {"PQ", "SQ", "RQ", "PQ_th", "PQ_st", "mIoU", "AP"}  # evaluated at the stop
    assert 0 <= result["data_wait_share"] < 1 and result["images_per_s"] > 0


def test_a_time_schedule_survives_a_slow_start_and_ends_with_its_budget(shapes_root, tmp_path):
    """Steps slowed for the first quarter of the budget (as beside another busy process on two
    cores): the run still uses its whole budget, max_iter is no limit, and the learning rate
    decays with the time spent to the end of its schedule."""
    budget_s, base_lr = 8.0, 1e-3
    solver = {"schedule_by_time": True, "warmup_iters": 0, "base_lr": base_lr, "checkpoint_period": 10**6}
    config = tiny_config(shapes_root, tmp_path, solver=solver)  # max_iter 6
    started = time.monotonic()

    def slow_start(record: dict) -> None:
        if time.monotonic() - started < budget_s / 4:
            time.sleep(0.25)

    result = train(config, max_minutes=budget_s / 60, on_log=slow_start)
    logged = records(tmp_path)
    assert result["seconds"] >= 0.95 * budget_s and result["time_budget"]["spent"] <= budget_s + 2
    assert not result["stopped_early"] and result["iteration"] == len(logged) > 6
    lrs = [r["lr"] for r in logged]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < 0.05 * base_lr  # the schedule ended
    for r in logged:  # each step's rate is the poly of the budget spent before it (<= after it)
        assert r["lr"] >= base_lr * (1 - r["budget_spent"]) ** 0.9 * (1 - 1e-9)


def test_a_budgeted_run_resumed_continues_its_schedule_with_the_time_left(shapes_root, tmp_path):
    budget_s = 6.0
    solver = {"schedule_by_time": True, "warmup_iters": 0, "checkpoint_period": 10}
    config = tiny_config(shapes_root, tmp_path, solver=solver)

    def crash(record: dict) -> None:
        if record["iteration"] == 12:  # after the checkpoint of iteration 10
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, max_minutes=budget_s / 60, on_log=crash)
    saved = json.loads((tmp_path / "checkpoint_0000010.json").read_text())["time_budget"]
    assert saved["seconds"] == budget_s and 0 < saved["spent"] < budget_s
    lr_at_10 = records(tmp_path)[9]["lr"]
    # a different budget on the command line does not restart the clock: the run's own is resumed
    result = train(config, resume=True, max_minutes=100)
    logged = records(tmp_path)
    assert [r["iteration"] for r in logged[:11]] == list(range(1, 12))
    lrs = [r["lr"] for r in logged]
    assert lrs == sorted(lrs, reverse=True) and lrs[10] <= lr_at_10  # no jump where it resumed
    assert result["seconds"] <= budget_s - saved["spent"] + 1.5  # only the budget that was left
    assert result["time_budget"]["seconds"] == budget_s and result["time_budget"]["spent"] >= 0.95 * budget_s


def test_tensorboard_scalars_are_written(shapes_root, tmp_path):
    import tensorboard  # noqa: F401  (in the test extra: the scalars are tested, not skipped)

    config = tiny_config(shapes_root, tmp_path, solver={"max_iter": 1, "tensorboard": True})
    train(config)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_bad_solver_settings_are_input_errors(shapes_root, tmp_path):
    with pytest.raises(InputError, match="fp16 needs a GPU"):
        train(tiny_config(shapes_root, tmp_path, solver={"amp": "fp16"}))
    with pytest.raises(InputError, match="data.train is not configured"):
        train(tiny_config(shapes_root, tmp_path, data={"test": {"folder": ""}, "train": {"folder": ""}}))


# --- two processes, gloo -------------------------------------------------------------------------


def _ddp_worker(rank: int, world_size: int, init_file: str, config: Config, out: str) -> None:
    import torch.distributed as dist

    from panopticlab.weights import save_weights
    from panopticlab import distributed
    from panopticlab.engine.trainer import Trainer
    from panopticlab.progress import no_progress

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        process = distributed.setup("cpu")
        trainer = Trainer(config, process)
        trainer.run(progress=no_progress)
        save_weights({k: p.detach() for k, p in trainer.model.named_parameters()}, Path(out) / f"rank{rank}.safetensors")
    finally:
        dist.destroy_process_group()


def test_two_process_ddp_averages_gradients_and_only_rank_0_writes(shapes_root, tmp_path):
    run = tmp_path / "run"
    config = tiny_config(shapes_root, run, solver={"max_iter": 3, "checkpoint_period": 2})
    torch.multiprocessing.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), config, str(tmp_path)), nprocs=2)

    rank0, _ = read_weights(tmp_path / "rank0.safetensors")
    rank1, _ = read_weights(tmp_path / "rank1.safetensors")
    # Each rank saw different images; equal parameters after 3 steps means averaged gradients.
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    final, _ = read_weights(run / "model_final.safetensors")
    assert all(torch.equal(final[k], rank0[k]) for k in rank0)
    assert [r["iteration"] for r in records(run)] == [1, 2, 3]  # one writer
    assert (run / "last_checkpoint").read_text().strip() == "checkpoint_0000003"
    assert all(math.isfinite(r["loss"]) for r in records(run))


def test_amp_auto_takes_bf16_only_where_the_hardware_computes_it(monkeypatch):
    from panopticlab.engine.trainer import resolve_amp

    cpu = torch.device("cpu")
    assert resolve_amp("off", cpu) == "off" and resolve_amp("bf16", cpu) == "bf16"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert resolve_amp("auto", cpu) == "off"  # an AVX2 CPU emulates bf16 convolutions
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert resolve_amp("auto", cpu) == "bf16"
