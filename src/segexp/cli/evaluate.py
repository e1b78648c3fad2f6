"""``segexp-eval ckpt=<file> [dataset=...] [save_predictions=true] [--trust-targets]``: evaluate a checkpoint, write
``metrics.json``.

The architecture is rebuilt from the resolved config stored in the checkpoint (so no model
flags need repeating); the dataset, inference strategy, eval output stride and trainer come
from the command line when given. The output has the same fields as a training run's.
With ``save_predictions=true`` every evaluated image's prediction is also written to
``<run dir>/predictions/`` in the evaluation server's format (DeepLabv3 Tables 7 and 13;
see :mod:`segexp.data.submission`); ``metrics.json`` then also holds ``predictions_dir`` and
``num_predictions`` (the PNG files in it).

On several devices (``trainer=ddp_cpu``, ``trainer=ddp``) every rank scores its own share of the split, each image
once (:class:`segexp.data.datamodule.EvalSampler`; ``data.val_limit`` keeps the first images of the split on any
number of devices), and rank 0 writes ``metrics.json`` from the confusion matrix summed over the ranks.

``"labelled"`` in ``metrics.json`` says whether the split has labels. A split published without them
(a test-server split such as VOC or Cityscapes ``test``, see ``SegmentationDataset.has_labels``) can only
be evaluated with ``save_predictions=true``; its ``mIoU``, ``pixel_acc`` and ``mean_acc`` are null and
``per_class_iou`` maps every class name to null (the same keys as a labelled run), since there is nothing
to score: the evaluation server computes the scores from the PNGs.

The checkpoint is read with ``weights_only=True`` (no pickled objects), and the ``_target_`` values of the config
stored in it are checked like those of a config file (:mod:`segexp.config`): a checkpoint from someone else names
only classes of the allowed packages unless ``--trust-targets`` is given.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from segexp import atomic
from segexp.cli.precheck import exit_on_config_error, input_errors_exit, run_cli
from segexp.config import CONF_DIR, ConfigError
from segexp.data.datasets.base import SegmentationDataset
from segexp.targets import TargetOrigin, hydra_target_origin
from segexp.training.build import build_datamodule, build_module, validate
from segexp.training.checkpoints import read_checkpoint
from segexp.training.eval_settings import run_config
from segexp.training.harness import (
    build_loggers,
    build_trainer,
    failure_record,
    finish_loggers,
    metrics_payload,
    output_dir_of,
)
from segexp.training.prediction_pngs import SavePredictions


def load_checkpoint(path: str) -> dict[str, Any]:
    """A Lightning checkpoint written by segexp-train, opened with ``weights_only=True``."""
    checkpoint = read_checkpoint(path, "ckpt")
    if "segexp" not in checkpoint:
        raise ConfigError(f"ckpt={path}: not a segexp checkpoint (no 'segexp' config entry; was it written by "
                          "segexp-train?)")
    return checkpoint


EVAL_KEYS = ("inference", "trainer", "logger", "callbacks")
"""Top-level nodes of the evaluated config that come from segexp-eval's own config, not the checkpoint's."""


def stored_config_origin(cfg: DictConfig) -> TargetOrigin:
    """Where a refused ``_target_`` of the evaluated config came from: segexp-eval's own config for its nodes
    (:data:`EVAL_KEYS`, and ``dataset`` when given), else the training config stored in the checkpoint (a checkpoint
    from someone else names code as a config file does)."""
    own = hydra_target_origin()

    def origin(key: str, target: str) -> str | None:
        root = key.split(".")[0].split("[")[0]
        if root in EVAL_KEYS or (root == "dataset" and cfg.get("dataset") is not None):
            return own(key, target) if own else None
        return f"the training config stored in ckpt={cfg.ckpt}"

    return origin


def check_scorable(dataset: SegmentationDataset, split: str, save_predictions: bool) -> None:
    """Raise :class:`ConfigError` for a split without labels evaluated without ``save_predictions``:
    such a run would produce nothing (no scores, no predictions)."""
    if not dataset.has_labels and not save_predictions:
        raise ConfigError(
            f"data.val_split={split}: the split has no labels (a test-server split), so there is nothing to "
            "score; pass save_predictions=true to write its predictions for the evaluation server"
        )


def unlabelled_scores(class_names: tuple[str, ...]) -> dict[str, Any]:
    """The score fields of metrics.json for a split without labels: all null, nothing was scored."""
    return {
        "mIoU": None,
        "pixel_acc": None,
        "mean_acc": None,
        "per_class_iou": dict.fromkeys(class_names),
    }


def count_predictions(out_dir: Path) -> int:
    """The prediction PNG files in ``out_dir`` (0 when it was never created)."""
    return sum(1 for _ in out_dir.glob("*.png")) if out_dir.is_dir() else 0


def print_summary(metrics: dict[str, Any], split: str, metrics_path: Path) -> None:
    """The scores, or for a split without labels where its predictions for the evaluation server are."""
    if metrics["labelled"]:
        if "predictions_dir" in metrics:
            print(f"wrote {metrics['num_predictions']} prediction PNGs to {metrics['predictions_dir']}")
        print(f"mIoU {metrics['mIoU']:.4f} | pixel acc {metrics['pixel_acc']:.4f} | mean acc {metrics['mean_acc']:.4f}")
    else:
        print(
            f"split '{split}' has no labels: no scores computed; submit the {metrics['num_predictions']} "
            f"predictions in {metrics['predictions_dir']} to the evaluation server"
        )
    print(f"metrics: {metrics_path}")


def run_evaluation(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt`` on ``data.val_split``; write and return the metrics.json payload (on any failure,
    ``error.json`` instead)."""
    with failure_record(output_dir_of(cfg)):
        return evaluate_checkpoint(cfg)


def evaluate_checkpoint(cfg: DictConfig) -> dict[str, Any]:
    checkpoint = load_checkpoint(str(cfg.ckpt))
    run = run_config(cfg, checkpoint["segexp"]["config"])
    validate(run, origin=stored_config_origin(cfg))
    datamodule = build_datamodule(run)
    trained_classes = checkpoint["segexp"]["class_names"]
    if list(datamodule.class_names) != list(trained_classes):
        raise ConfigError(
            f"ckpt={cfg.ckpt} predicts {len(trained_classes)} classes {trained_classes[:4]}..., but the "
            f"dataset {datamodule.dataset_class.__name__} has {datamodule.num_classes}"
        )
    evaluated = datamodule.split_dataset(datamodule.val_split, train=False)  # cached for trainer.validate
    check_scorable(evaluated, datamodule.val_split, bool(cfg.get("save_predictions")))
    labelled = evaluated.has_labels
    output_dir = output_dir_of(run)
    module = build_module(run, datamodule)
    module.load_state_dict(checkpoint["state_dict"])
    loggers = build_loggers(run, output_dir)
    saver = SavePredictions(output_dir / "predictions") if cfg.get("save_predictions") else None
    failed = True
    start = time.perf_counter()
    try:
        trainer = build_trainer(run, output_dir, loggers, callbacks=[saver] if saver else [])
        trainer.validate(module, datamodule=datamodule, verbose=False)
        failed = False
    finally:
        finish_loggers(loggers, failed)
    metrics = metrics_payload(module, trainer, datamodule.batch_size, time.perf_counter() - start, output_dir,
                              split_size=len(evaluated))
    metrics["steps"] = metrics["mIoU_step"] = int(checkpoint.get("global_step", 0))
    for key in ("best_mIoU", "best_step", "resumes"):  # one evaluation: no best among several, no resume
        del metrics[key]
    metrics["ckpt"] = str(Path(str(cfg.ckpt)).resolve())
    metrics["inference"] = inference_settings(module)
    metrics["labelled"] = labelled
    if not labelled:
        metrics.update(unlabelled_scores(datamodule.class_names))
    if saver is not None:
        metrics["predictions_dir"] = str(saver.out_dir)
        metrics["num_predictions"] = count_predictions(saver.out_dir)
    if trainer.is_global_zero:  # as segexp-train: every rank holds the same synced scores, one writes them
        atomic.write_json(output_dir / "metrics.json", metrics)
        print_summary(metrics, datamodule.val_split, output_dir / "metrics.json")
    return metrics


def inference_settings(module: Any) -> dict[str, Any]:
    """How the scores were computed: test-time scales, flip, whole image or sliding window, output stride,
    shifted passes (scores at output_stride / shift_passes), and the size each image was padded to (or None)."""
    inference = module.inference
    return {
        "scales": list(inference.scales),
        "flip": inference.flip,
        "mode": inference.mode,
        "crop_size": list(inference.crop_size) if inference.crop_size else None,
        "stride": list(inference.stride) if inference.stride else None,
        "output_stride": module.eval_output_stride or module.model.output_stride,
        "shift_passes": inference.shift_passes,
        "pad_to": list(inference.pad_to) if inference.pad_to else None,
    }


def hydra_result(metrics: dict[str, Any]) -> float:
    """What ``main`` returns to Hydra (e.g. for sweepers): the mIoU, NaN for a split without labels."""
    score = metrics["mIoU"]
    return math.nan if score is None else float(score)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="eval")
def hydra_main(cfg: DictConfig) -> float:
    exit_on_config_error(lambda: require_ckpt(cfg))
    with input_errors_exit("segexp-eval"):
        return hydra_result(run_evaluation(cfg))


def require_ckpt(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg, "ckpt"):
        raise ConfigError("ckpt=<path> is required: the segexp-train checkpoint to evaluate, e.g. "
                          "ckpt=outputs/train/runs/<time>/checkpoints/last.ckpt")


def main() -> None:
    """Console entry point (see :func:`segexp.cli.precheck.run_cli`)."""
    run_cli(hydra_main, "eval")


if __name__ == "__main__":
    main()
