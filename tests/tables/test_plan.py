"""What a table run does per row (segexp.tables.plan): merged overrides, composed configs and their identity,
protocol guards, own-process rows and eval rows under a profile."""

from __future__ import annotations

import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from segexp.config import compose_config
from segexp.tables.plan import (
    NotRunUnderProfile,
    compose,
    config_hash,
    drop_overrides,
    effective_batch,
    eval_overrides,
    merge_overrides,
    needs_own_process,
    plan_train_job,
    protocol_warnings,
    row_file_text,
    train_overrides,
)
from segexp.tables.spec import Protocol, load_all, load_profile, load_table, profile_names

PROFILES = profile_names()


def compose_table_rows(profile: str, table_id: str) -> list[str]:
    """Compose (and validate) every runnable row of a table under a profile; the problems found (a row the
    profile does not run on this machine is reported as ``<table> <row> [<profile>]: not run``)."""
    prof, spec, problems = load_profile(profile), load_table(table_id), []
    for row in (r for r in spec.rows if r.runnable):
        try:
            if row.is_eval:
                compose(eval_overrides(row, prof, Path("/x/last.ckpt")), 0, config_name="eval")
            else:
                plan_train_job(spec, row, prof, 0, Path("/x"))
        except NotRunUnderProfile:
            problems.append(f"{table_id} {row.name} [{profile}]: not run")
        except Exception as err:  # collect every failing row, not only the first
            problems.append(f"{table_id} {row.name} [{profile}]: {type(err).__name__}: {err}")
    return problems


@pytest.mark.parametrize("profile", PROFILES)
def test_every_ready_row_composes_under_every_profile(profile: str) -> None:
    """~110 rows per profile: composed in two forked workers (Hydra composition is ~0.1 s per row)."""
    ready = [s.id for s in load_all() if s.ready]
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("fork")) as pool:
        problems = [p for found in pool.map(compose_table_rows, [profile] * len(ready), ready) for p in found]
    # DeepLabv3 Table 11: 16 and 32 workers span several nodes (a cluster launcher); on a CPU only 2 processes
    not_run = {"full": ["workers16", "workers32"], "dryrun": ["workers16", "workers32"],
               "gpu_proxy": ["workers2", "workers4", "workers8", "workers16", "workers32"]}.get(
        profile, ["workers4", "workers8", "workers16", "workers32"])
    expected = [f"deeplabv3.t11 {name} [{profile}]: not run" for name in not_run]
    if profile == "gpu_proxy":  # one GPU: the pacbal tables train on 2 devices (its Sec. 4: 2 GPUs x 8 images)
        expected += [f"{s.id} {r.name} [{profile}]: not run" for s in load_all() if s.ready and s.paper == "pacbal"
                     for r in s.rows if r.runnable]
    assert sorted(problems) == sorted(expected)


def test_merge_overrides_later_wins_and_reconciles_prefixes() -> None:
    merged = merge_overrides(["a=1", "b.c=[1,2]", "+d=1", "e=1"], ["a=2", "d=2", "++e=3"], ["b.c=[3]"])
    assert merged == ["a=2", "++d=2", "++e=3", "b.c=[3]"]
    assert merge_overrides(["+x=1"], ["+x=2"]) == ["+x=2"]
    assert merge_overrides(["x=1"], ["~x"]) == ["~x"]
    assert drop_overrides(["data=1", "data.crop_size=[1]", "database=2", "dataset=voc", "head.x=1"],
                          ["data", "dataset"]) == ["database=2", "head.x=1"]


def test_profile_replaces_protocol_but_keeps_the_row_model() -> None:
    spec, smoke = load_table("deeplabv3.t8"), load_profile("smoke")
    overrides = train_overrides(spec, spec.row("crop321"), smoke)
    cfg = compose(overrides, seed=0)
    assert cfg.backbone.depth == 101 and list(cfg.backbone.multi_grid) == [1, 2, 4]
    assert cfg.head.image_pooling is True and cfg.model.bn_momentum == pytest.approx(0.0003)
    assert list(cfg.data.crop_size) == [64, 64] and cfg.trainer.max_steps == 2
    assert cfg.dataset._target_.endswith("SyntheticShapes") and cfg.backbone.pretrained is None
    job = plan_train_job(spec, spec.row("crop321"), smoke, 0, Path("/tmp/unused"))
    assert job.warnings == ("profile smoke replaces data.crop_size=[321,321] by data.crop_size=[64,64]",)
    full = compose(train_overrides(spec, spec.row("crop321"), load_profile("full")), seed=0)
    assert list(full.data.crop_size) == [321, 321] and full.trainer.max_steps == 30000
    assert full.backbone.pretrained.endswith("pretrained/resnet101.pth")


def test_row_file_composes_like_the_command_line(tmp_path: Path) -> None:
    spec, smoke = load_table("deeplabv3.t5"), load_profile("smoke")
    overrides = train_overrides(spec, spec.row("mg124_aspp24"), smoke)
    row_file = tmp_path / "table_row" / "mg124_aspp24" / "seed1.yaml"
    row_file.parent.mkdir(parents=True)
    row_file.write_text(row_file_text(overrides, {"seed": 1}))
    via_file = compose_config(["+table_row=mg124_aspp24/seed1", f"hydra.searchpath=[file://{tmp_path}]",
                               "output_dir=/x"])
    direct = compose_config([*overrides, "seed=1", "output_dir=/x"])
    assert OmegaConf.to_container(via_file, resolve=True) == OmegaConf.to_container(direct, resolve=True)


def test_config_hash_ignores_output_paths_logger_and_seed_only() -> None:
    base = ["experiment=synthetic", "logger=csv"]
    reference = config_hash(compose(base, seed=0))
    assert config_hash(compose([*base, "logger=tensorboard"], seed=0)) == reference
    assert config_hash(compose(base, seed=1)) == reference  # the seed folder says which seed it is
    assert config_hash(compose([*base, "head.channels=32"], seed=0)) != reference


def test_protocol_guard_and_own_process_decision() -> None:
    spec, full = load_table("deeplabv3.t9"), load_profile("full")
    batch4 = compose(train_overrides(spec, spec.row("batch4"), full), seed=0)
    assert protocol_warnings(batch4, spec.protocol_of(spec.row("batch4"))) == []
    assert protocol_warnings(batch4, Protocol(effective_batch=16, max_steps=30000)) == [
        "effective batch 4 (data.batch_size=4 x 1 devices x 1 accumulated) != paper 16"]
    accumulated = OmegaConf.create({"data": {"batch_size": 8}, "trainer": {
        "devices": 1, "num_nodes": 1, "accumulate_grad_batches": 2, "max_steps": 1000}})
    assert protocol_warnings(accumulated, Protocol(effective_batch=16, max_steps=30000)) == [
        "trainer.max_steps=1000 != paper 30000 iterations"]
    ddp = OmegaConf.create({"data": {"batch_size": 8}, "trainer": {"devices": 2, "num_nodes": 1,
                                                                   "strategy": "ddp"}})
    single = OmegaConf.create({"data": {"batch_size": 8}, "trainer": {"devices": 1, "strategy": "auto"}})
    nodes = OmegaConf.create({"data": {"batch_size": 8}, "trainer": {"devices": 1, "num_nodes": 4}})
    assert needs_own_process(ddp, None) and needs_own_process(ddp, "basic") and needs_own_process(nodes, None)
    assert not needs_own_process(ddp, "submitit_slurm")  # one SLURM task per device: stays in the sweep
    assert not needs_own_process(single, None)
    job = plan_train_job(load_table("pacbal.t3"), load_table("pacbal.t3").row("deeplabv3"), full, 0, Path("/x"))
    assert job.own_process  # 2 GPUs x 8 images


def test_replica_rows_keep_their_processes_under_a_profile_and_match_the_protocol_in_full() -> None:
    """DeepLabv3 Table 11: workers2 runs as 2 gloo processes under smoke; larger rows are not run there; under
    full every row has the paper's effective batch 16 (workers32: 32, lr x 2, half the steps)."""
    spec, smoke, full = load_table("deeplabv3.t11"), load_profile("smoke"), load_profile("full")
    job = plan_train_job(spec, spec.row("workers2"), smoke, 0, Path("/x"))
    cfg = compose(job.overrides, seed=0)
    assert (cfg.trainer.devices, cfg.trainer.strategy, cfg.trainer.accelerator) == (2, "ddp", "cpu")
    assert cfg.data.batch_size == 2 and job.own_process
    assert job.warnings == ("profile smoke runs its 2 processes as trainer=ddp_cpu data.batch_size=2, "
                            "effective batch 4",)
    single = plan_train_job(spec, spec.row("workers1"), smoke, 0, Path("/x"))
    assert compose(single.overrides, seed=0).trainer.devices == 1 and not single.own_process
    with pytest.raises(NotRunUnderProfile, match="trains on 4 processes; profile smoke runs at most 2"):
        plan_train_job(spec, spec.row("workers4"), smoke, 0, Path("/x"))
    for name, lr in (("workers1", 0.007), ("workers2", 0.007), ("workers4", 0.007), ("workers8", 0.007)):
        job = plan_train_job(spec, spec.row(name), full, 0, Path("/x"))
        cfg = compose(job.overrides, seed=0)
        assert job.warnings == () and effective_batch(cfg) == 16 and cfg.schedule.lr == lr
        assert cfg.trainer.sync_batchnorm == (name != "workers1")
    with pytest.raises(NotRunUnderProfile, match="trainer.num_nodes=4: a several-node row needs a cluster launcher"):
        plan_train_job(spec, spec.row("workers32"), full, 0, Path("/x"))
    job = plan_train_job(spec, spec.row("workers32"), full, 0, Path("/x"), launcher="submitit_slurm")
    cfg = compose(job.overrides, seed=0)
    assert job.warnings == () and effective_batch(cfg) == 32 and cfg.schedule.lr == pytest.approx(0.014)
    assert cfg.trainer.max_steps == 15000


def test_eval_rows_lose_the_data_settings_a_profile_drops() -> None:
    row = load_table("deeplabv3.t7").row("deeplabv3")
    smoke = eval_overrides(row, load_profile("smoke"), Path("/r/last.ckpt"))
    assert "data.val_split=test" not in smoke and "save_predictions=true" in smoke
    assert "data.val_split=test" in eval_overrides(row, load_profile("full"), Path("/r/last.ckpt"))


def test_a_row_identity_ignores_settings_at_their_declared_default_and_sees_every_other_change() -> None:
    """A key that conf/ gains with the default that keeps the old behaviour changes no finished row's hash; any
    value a row runs with that differs, a default changed in conf/, and a value put back to its default do."""
    import hashlib

    from omegaconf import open_dict

    from segexp.tables.plan import compose, config_hash, legacy_config_hash, recorded_target_names

    spec = load_table("deeplabv3.t5")
    cfg = compose(train_overrides(spec, spec.row("mg111"), load_profile("smoke")), 0)
    without = cfg.copy()
    with open_dict(without):  # as conf/ was before data.val_limit / normalize_on_device were written into it
        del without.data["val_limit"], without.data["normalize_on_device"]
        without.backbone.pop("frozen_bn")  # a constructor parameter left out: its default (False) applies
    assert config_hash(without) == config_hash(cfg)
    changed = {"data.val_limit": 8, "model.bn_momentum": 0.1, "backbone.frozen_bn": True, "head.rates": [1, 2, 3],
               "data.hflip": False, "schedule.lr": 0.5}
    for key, value in changed.items():
        other = cfg.copy()
        OmegaConf.update(other, key, value, force_add=True)
        assert config_hash(other) != config_hash(cfg), key
    # a row recorded under the old whole-config hash, before conf/ held the new keys, still matches
    before = cfg.copy()
    with open_dict(before):
        del before.data["val_limit"], before.data["normalize_on_device"]
    plain = recorded_target_names(OmegaConf.to_container(before, resolve=True))  # callbacks under their old modules
    for key in ("output_dir", "logger", "ckpt_path", "ckpt", "seed", "resume_changes"):
        plain.pop(key, None)
    old_hash = hashlib.sha256(json.dumps([plain], sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert legacy_config_hash(cfg) == old_hash
    assert config_hash(cfg) != old_hash  # rows written from now on carry the identity hash
