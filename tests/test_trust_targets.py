"""Configs from others cannot run code by surprise: ``_target_`` values outside the allowed packages are refused
(by key, value and where they came from) before anything is imported, unless ``--trust-targets``; checkpoints load
with ``weights_only=True``."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from segexp.cli import table as table_cli
from segexp.cli.precheck import check_command_line_targets, run_cli, sweep_combinations
from segexp.config import REPO_ROOT, ConfigError, compose_config
from segexp.tables.plan import plan_train_job
from segexp.tables.runner import run_table
from segexp.tables.spec import load_profile, load_spec
from segexp.tables.yaml_reader import SpecError
from segexp.targets import TRUST_TARGETS_ENV, UntrustedTargetError, check_target_allowed
from segexp.training.build import validate
from tests.helpers.runs import FAST_RUN
from tests.helpers.tables import write_spec

ALLOWED = "not in the allowed packages (segexp, torch, torchvision, pytorch_lightning, lightning, albumentations)"


class Foreign:
    """A module outside the allowed packages, on ``sys.path``, that leaves a file behind when it is imported
    (``imported``) and when its ``record`` runs (``called``, what its pickled ``Payload`` does when unpickled)."""

    def __init__(self, root: Path) -> None:
        self.name = f"foreign_{uuid.uuid4().hex[:12]}"
        self.imported, self.called = root / f"{self.name}.imported", root / f"{self.name}.called"
        root.mkdir(parents=True, exist_ok=True)
        (root / f"{self.name}.py").write_text(f'''
from pathlib import Path

Path({str(self.imported)!r}).write_text("imported")


class Fusion:
    def __init__(self, in_keys=None, in_channels=None, scales=None):
        pass


def record(path):
    Path(path).write_text("called")


class Payload:
    def __reduce__(self):
        return record, ({str(self.called)!r},)
''')

    def __getattr__(self, attr: str) -> str:
        if attr.startswith("_"):
            raise AttributeError(attr)
        return f"{self.name}.{attr}"  # foreign.Fusion -> "foreign_<id>.Fusion"


@pytest.fixture
def foreign(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Foreign]:
    module = Foreign(tmp_path / "foreign")
    monkeypatch.syspath_prepend(str(module.imported.parent))
    yield module
    sys.modules.pop(module.name, None)


def make(*overrides: str, config_name: str = "train"):
    return compose_config([*FAST_RUN, *overrides], config_name)


# ----------------------------------------------------------------------------- the allowlist


@pytest.mark.parametrize("target", ["torch.nn.Identity", "segexp.models.fusion.mean.MeanFusion",
                                    "pytorch_lightning.callbacks.EarlyStopping", "torchvision.models.ResNet",
                                    "albumentations.HorizontalFlip", "torch"])
def test_allowed_packages_pass(target: str) -> None:
    check_target_allowed(target, "fusion")


@pytest.mark.parametrize(("target", "why"), [
    ("torchx.foo", ALLOWED), ("segexpevil.x", ALLOWED), ("os.system", ALLOWED), ("subprocess.call", ALLOWED),
    ("builtins.eval", ALLOWED), ("tests.models.test_outputs.ScaleWeights", ALLOWED),
    ("hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher", ALLOWED),  # only under hydra.*
    ("torch.hub.load", "torch.hub loads or runs code from outside the config"),
    ("torch.load", "torch.load loads or runs code"), ("torch.utils.cpp_extension.load_inline", "cpp_extension"),
    ("pytorch_lightning.cli.LightningCLI", "pytorch_lightning.cli loads or runs code"),
])
def test_other_packages_and_code_loaders_are_refused(target: str, why: str) -> None:
    with pytest.raises(UntrustedTargetError) as err:
        check_target_allowed(target, "fusion", "conf/fusion/x.yaml")
    assert str(err.value).startswith(f"fusion._target_={target}: ")
    assert why in str(err.value)
    assert str(err.value).endswith("; from conf/fusion/x.yaml; run with --trust-targets to allow it")


def test_hydra_keys_may_also_name_hydra_launchers_and_plugins() -> None:
    check_target_allowed("hydra._internal.core_plugins.basic_launcher.BasicLauncher", "hydra.launcher")
    check_target_allowed("hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher", "hydra.launcher")
    with pytest.raises(UntrustedTargetError, match=r"^hydra\.callbacks\.x\._target_=os\.system: not in the"):
        check_target_allowed("os.system", "hydra.callbacks.x")


def test_the_shipped_configs_pass_untrusted() -> None:
    for config_name in ("train", "eval"):
        check_command_line_targets([], config_name)
    check_command_line_targets(["hydra/launcher=basic", "logger=[csv,tensorboard]", "fusion=max"], "train")
    validate(make("fusion=mean", "model.scales=[1.0,0.5]", "aux_head=fcn", "block=prb"))


# ----------------------------------------------------------------------------- validate


@pytest.mark.parametrize("override", ["fusion._target_={}", "+backbone.unit_wrappers.res5c._target_={}",
                                      "+backbone.unit_wrappers.res5c={{_target_:{},_partial_:true}}"])
def test_validate_refuses_a_foreign_target_without_importing_it(foreign: Foreign, override: str) -> None:
    text = override.format(foreign.Fusion)
    cfg = make("fusion=mean", text)
    key = "fusion" if text.startswith("fusion") else "backbone.unit_wrappers.res5c"
    with pytest.raises(UntrustedTargetError) as err:
        validate(cfg)
    assert str(err.value) == (f"{key}._target_={foreign.Fusion}: {ALLOWED}; from the override '{text}'; "
                              "run with --trust-targets to allow it")
    assert not foreign.imported.exists()


def test_trust_lifts_the_check(foreign: Foreign, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = make("fusion=mean", f"fusion._target_={foreign.Fusion}")
    monkeypatch.setenv(TRUST_TARGETS_ENV, "1")
    validate(cfg)
    assert foreign.imported.exists()


def test_a_function_of_an_allowed_package_is_refused() -> None:
    """``segexp.atomic.write_text(path, text)`` would write any file: only classes may be named."""
    with pytest.raises(UntrustedTargetError, match=r"^fusion\._target_=segexp\.atomic\.write_text: a function, "
                                                   r"not a class; a config may only name classes"):
        validate(make("fusion=mean", "fusion._target_=segexp.atomic.write_text"))


def conf_dir(root: Path, name: str, text: str) -> str:
    """A config search path holding ``experiment/<name>.yaml``; the override that adds it."""
    (root / "experiment").mkdir(parents=True, exist_ok=True)
    (root / "experiment" / f"{name}.yaml").write_text("# @package _global_\n" + text)
    return f"hydra.searchpath=[file://{root}]"


def test_a_target_from_a_config_file_names_the_file(foreign: Foreign, tmp_path: Path) -> None:
    searchpath = conf_dir(tmp_path / "theirs", "evil", "defaults:\n  - override /fusion: mean\n"
                                                        f"fusion:\n  _target_: {foreign.Fusion}\n")
    with pytest.raises(UntrustedTargetError) as err:
        validate(make(searchpath, "experiment=evil"))
    assert str(err.value).startswith(f"fusion._target_={foreign.Fusion}: {ALLOWED}; "
                                     f"from {tmp_path / 'theirs' / 'experiment' / 'evil.yaml'}; ")
    with pytest.raises(UntrustedTargetError, match="from .*/theirs/experiment/evil.yaml; run with --trust-targets"):
        check_command_line_targets([searchpath, "experiment=evil"], "train")
    assert not foreign.imported.exists()


def test_a_target_behind_an_interpolation_is_found(foreign: Foreign, tmp_path: Path) -> None:
    """``${oc.create:{_target_: ...}}`` becomes a node only when resolved, and instantiating would build it."""
    searchpath = conf_dir(tmp_path / "theirs", "hidden", f"hidden: '${{oc.create:{{_target_: {foreign.Fusion}}}}}'\n")
    with pytest.raises(UntrustedTargetError, match=rf"^hidden\._target_={foreign.Fusion}: not in the allowed"):
        validate(make(searchpath, "experiment=hidden"))
    assert not foreign.imported.exists()


# ----------------------------------------------------------------------------- the command line


def test_hydra_callbacks_and_logging_are_checked_before_hydra_runs(foreign: Foreign, tmp_path: Path) -> None:
    """Hydra instantiates its callbacks and configures logging before the job starts: the pre-Hydra check reads
    the ``hydra`` node too."""
    callback = f"+hydra.callbacks.mine._target_={foreign.Fusion}"
    with pytest.raises(UntrustedTargetError, match=rf"^hydra\.callbacks\.mine\._target_={foreign.Fusion}: not in "
                                                   rf".*; from the command-line override '{re.escape(callback)}'"):
        check_command_line_targets([callback], "eval")
    searchpath = conf_dir(tmp_path / "theirs", "cb",
                          f"hydra:\n  callbacks:\n    x:\n      _target_: {foreign.Fusion}\n")
    with pytest.raises(UntrustedTargetError, match=r"^hydra\.callbacks\.x\._target_=.*from .*/theirs/experiment/cb"):
        check_command_line_targets([searchpath, "experiment=cb"], "train")
    searchpath = conf_dir(tmp_path / "theirs", "log", "hydra:\n  job_logging:\n    handlers:\n      console:\n"
                                                      f"        stream: ext://{foreign.name}.x\n")
    with pytest.raises(UntrustedTargetError, match=r"^hydra\.job_logging\.handlers\.console\.stream=ext://foreign"):
        check_command_line_targets([searchpath, "experiment=log"], "train")
    assert not foreign.imported.exists()


def test_every_value_of_a_sweep_is_checked(foreign: Foreign, tmp_path: Path) -> None:
    with pytest.raises(UntrustedTargetError, match=rf"^fusion\._target_={foreign.Fusion}: "):
        check_command_line_targets(["-m", "fusion=mean", f"fusion._target_=torch.nn.Identity,{foreign.Fusion}"],
                                   "train")
    searchpath = conf_dir(tmp_path / "theirs", "evil", f"fusion:\n  _target_: {foreign.Fusion}\n")
    with pytest.raises(UntrustedTargetError, match=r"from .*/theirs/experiment/evil.yaml"):
        check_command_line_targets(["--multirun", searchpath, "fusion=mean", "experiment=synthetic,evil"], "train")
    assert not foreign.imported.exists()
    assert sweep_combinations(["a=1,2", "b.c=3,4", "+d=5,6", "e=7"]) == [
        ["a=1", "b.c=3", "+d=5", "e=7"], ["a=2", "b.c=3", "+d=5", "e=7"], ["a=1", "b.c=3", "+d=6", "e=7"]]


def test_a_pickled_rerun_config_needs_trust() -> None:
    with pytest.raises(UntrustedTargetError, match="--experimental-rerun loads a pickled config"):
        check_command_line_targets(["--experimental-rerun", "outputs/x/.hydra/config.pickle"], "train")


def test_run_cli_takes_the_flag_off_the_command_line(monkeypatch: pytest.MonkeyPatch, foreign: Foreign) -> None:
    seen = []
    monkeypatch.setattr(sys, "argv", ["segexp-train", "fusion=mean", f"fusion._target_={foreign.Fusion}",
                                      "--trust-targets"])
    run_cli(lambda: seen.append((list(sys.argv), os.environ[TRUST_TARGETS_ENV])), "train")
    assert seen == [(["segexp-train", "fusion=mean", f"fusion._target_={foreign.Fusion}"], "1")]


def train_process(foreign: Foreign, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join(filter(None, [str(REPO_ROOT / "src"), str(foreign.imported.parent),
                                         os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path,
           "SEGEXP_OUTPUT_DIR": str(tmp_path / "outputs"), "WANDB_MODE": "disabled", TRUST_TARGETS_ENV: ""}
    return subprocess.run([sys.executable, "-m", "segexp.cli.train", *FAST_RUN, "logger=csv", *args], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)


def test_segexp_train_refuses_before_anything_runs_and_trusts_with_the_flag(foreign: Foreign, tmp_path: Path) -> None:
    override = f"fusion._target_={foreign.Fusion}"
    refused = train_process(foreign, tmp_path, "fusion=mean", override)
    assert refused.returncode == 2, refused.stderr
    assert (f"{override}: {ALLOWED}; from the command-line override '{override}'; run with --trust-targets to allow "
            "it") in refused.stderr
    assert not foreign.imported.exists() and not (tmp_path / "outputs").exists()  # no Hydra run, no run dir

    trusted = train_process(foreign, tmp_path, "fusion=mean", override, "+fusion.colour=1", "--trust-targets")
    assert foreign.imported.exists()  # past the check: the job imported the class and checked it
    assert trusted.returncode != 0 and "Unknown config key 'fusion.colour'" in trusted.stderr, trusted.stderr
    assert "allowed packages" not in trusted.stderr


# ----------------------------------------------------------------------------- table specs


SPEC = """
id: demo.t1
title: demo
paper: demo
dataset: synthetic
metrics: [mIoU]
base: [dataset=synthetic]
rows:
  - name: a
    overrides: [backbone=resnet18]
    paper: {{mIoU: 50.0}}
  - name: b
    overrides: [backbone=resnet18, fusion=mean, '{override}']
    paper: {{mIoU: 51.0}}
"""


def write_demo_spec(root: Path, override: str) -> Path:
    return write_spec(root, SPEC.format(override=override))


@pytest.mark.parametrize(("override", "key"), [
    ("fusion._target_=evil.mod", "fusion"),
    ("+backbone.unit_wrappers.res5c._target_=os.system", "backbone.unit_wrappers.res5c"),
    ("+backbone.unit_wrappers.res5c={_target_: subprocess.call}", "backbone.unit_wrappers.res5c"),
])
def test_a_spec_naming_foreign_code_is_refused_by_file_and_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                override: str, key: str) -> None:
    path = write_demo_spec(tmp_path, override)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    target = "evil.mod" if "evil" in override else "os.system" if "os." in override else "subprocess.call"
    assert str(err.value) == (f"{path}: rows[1].overrides[2]: {key}._target_={target}: {ALLOWED}; "
                              "run with --trust-targets to allow it")
    monkeypatch.setenv(TRUST_TARGETS_ENV, "1")
    assert load_spec(path).row("b").overrides[2] == override


def test_base_and_profile_overrides_are_checked_too(tmp_path: Path) -> None:
    path = write_demo_spec(tmp_path, "head=aspp")
    path.write_text(path.read_text().replace("base: [dataset=synthetic]",
                                             "base: [dataset=synthetic, 'loss._target_=x.y']"))
    with pytest.raises(SpecError, match=r"t1\.yaml: base\[1\]: loss\._target_=x\.y: not in the allowed packages"):
        load_spec(path)
    profile = tmp_path / "profiles" / "theirs.yaml"
    profile.parent.mkdir()
    profile.write_text("description: x\noverrides: ['+callbacks.x._target_=os.system']\n")
    with pytest.raises(SpecError, match=r"theirs\.yaml: overrides\[0\]: callbacks\.x\._target_=os\.system: not in"):
        load_profile("theirs", root=profile.parent)


def test_a_planned_row_naming_foreign_code_refuses_the_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              foreign: Foreign) -> None:
    """The composed config of each row is checked too (e.g. a config file a row selects): the error names the spec
    file and the row, and the whole run stops instead of recording the row as failed."""
    override = f"fusion._target_={foreign.Fusion}"
    monkeypatch.setenv(TRUST_TARGETS_ENV, "1")
    spec, smoke = load_spec(write_demo_spec(tmp_path, override)), load_profile("smoke")
    monkeypatch.setenv(TRUST_TARGETS_ENV, "")
    with pytest.raises(SpecError) as err:
        plan_train_job(spec, spec.row("b"), smoke, 0, tmp_path / "runs")
    assert str(err.value).startswith(f"{spec.path}: rows[1] (b): {override}: {ALLOWED}; from the override")
    with pytest.raises(SpecError, match=r"rows\[1\] \(b\): fusion\._target_="):
        run_table(spec, smoke, dry_run=True, base_dir=tmp_path / "runs")
    assert not foreign.imported.exists()
    with pytest.raises(SpecError, match=r"^head\._target_=os\.system: .*; from the override 'head._target_=os.system' "
                                        r"after --; run with"):
        run_table(spec, smoke, dry_run=True, base_dir=tmp_path / "runs", extra=["head._target_=os.system"])


def test_segexp_table_takes_the_flag_and_passes_it_on(capsys: pytest.CaptureFixture[str]) -> None:
    for command in (["list"], ["run", "demo.t1"], ["report", "demo.t1"]):
        assert table_cli.parser().parse_args([*command, "--trust-targets"]).trust_targets
        assert not table_cli.parser().parse_args(command).trust_targets
    with pytest.raises(SystemExit):
        table_cli.parser().parse_args(["run", "--help"])
    assert "--trust-targets" in capsys.readouterr().out
    assert table_cli.main(["list", "--trust-targets"]) == 0
    assert os.environ[TRUST_TARGETS_ENV] == "1"  # inherited by the segexp-train / segexp-eval processes of a run


# ----------------------------------------------------------------------------- checkpoints


def test_resuming_from_a_checkpoint_holding_a_pickled_object_refuses_it(make_cfg, foreign: Foreign, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The resume path (``ckpt_path``) reads the file with ``weights_only=True`` explicitly before Lightning opens
    it (Lightning's own load passes ``weights_only=True`` too): even where torch's default was turned back to
    full unpickling (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``) the payload is refused with the file named, not run."""
    from segexp.cli.train import run_training

    payload = importlib.import_module(foreign.name).Payload()  # saving it imports the module here
    ckpt = tmp_path / "theirs.ckpt"
    torch.save({"state_dict": {}, "global_step": 0, "extra": payload}, ckpt)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(ConfigError, match=r"ckpt_path=.*theirs\.ckpt: not a segexp checkpoint .*a pickle of arbitrary"):
        run_training(make_cfg(f"ckpt_path={ckpt}"))  # read with weights_only=True before Lightning opens it
    assert not foreign.called.exists()


def test_a_checkpoint_naming_foreign_code_in_its_stored_config_is_refused(make_cfg, foreign: Foreign,
                                                                          tmp_path: Path) -> None:
    from segexp.cli.evaluate import evaluate_checkpoint

    stored = OmegaConf.to_container(make_cfg("fusion=mean", f"fusion._target_={foreign.Fusion}"), resolve=True)
    ckpt = tmp_path / "theirs.ckpt"
    torch.save({"state_dict": {}, "segexp": {"config": stored, "class_names": ["a", "b"]}}, ckpt)
    with pytest.raises(ConfigError) as err:
        evaluate_checkpoint(make_cfg(f"ckpt={ckpt}", base=["data.num_workers=0"], config_name="eval"))
    assert str(err.value) == (f"fusion._target_={foreign.Fusion}: {ALLOWED}; from the training config stored in "
                              f"ckpt={ckpt}; run with --trust-targets to allow it")
    assert not foreign.imported.exists()
