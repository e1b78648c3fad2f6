"""The msattn tables' protocol under `full` (issue 22, multi-scale attention): the specs give the `full` guard the
card's batch and iterations, and the rows run the dilation placement the card states.

Known answers: the guard's warning lines for a run composed with another batch and iteration count; each
proposed-model row's per-stream dilations (Sec. 3: 12 on the 1x stream, 2 on the 0.5x one) from its composed
config; the card's alternative (Sec. 2.1) is a valid value of the option it names.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from segexp.models.fusion.msattn import LARGE_DILATION_ON, stream_dilations
from segexp.tables.card import EFFECTIVE_BATCH
from segexp.tables.plan import plan_train_job, protocol_warnings
from segexp.tables.spec import load_profile, load_table

TABLES = ["msattn.t1", "msattn.t2", "msattn.t3"]
PAPER_CARD = load_table("msattn.t1").protocol  # the table's protocol over experiments/msattn/card.yaml


def composed(table: str, row: str):
    spec = load_table(table)
    return spec, plan_train_job(spec, spec.row(row), load_profile("full"), 0, Path("/x")).cfg


@pytest.mark.parametrize("table", TABLES)
def test_every_row_gives_the_guard_the_cards_batch_and_iterations(table: str) -> None:
    spec = load_table(table)
    for row in spec.rows:
        protocol = spec.protocol_of(row)
        assert protocol.effective_batch is not None and protocol.max_steps is not None, row.name
        assert protocol.effective_batch == protocol.card[EFFECTIVE_BATCH].value
        assert protocol.max_steps == protocol.card["trainer.max_steps"].value


@pytest.mark.parametrize(("table", "batch", "steps"), [("msattn.t1", 20, 6000), ("msattn.t2", 20, 6000),
                                                        ("msattn.t3", 16, 100000)])
def test_the_full_guard_warns_about_another_batch_or_iteration_count(table: str, batch: int, steps: int) -> None:
    spec, cfg = composed(table, "ours")
    protocol = spec.protocol_of(spec.row("ours"))
    assert protocol_warnings(cfg, protocol) == []
    cfg.data.batch_size, cfg.trainer.max_steps = 10, 300
    assert protocol_warnings(cfg, protocol) == [
        f"effective batch 10 (data.batch_size=10 x 1 devices x 1 accumulated) != paper {batch}",
        f"trainer.max_steps=300 != paper {steps} iterations",
    ]


@pytest.mark.parametrize(("table", "row"), [("msattn.t1", "ours"), ("msattn.t2", "multi_stage_dilations"),
                                            ("msattn.t2", "ours"), ("msattn.t3", "ours"), ("msattn.t3", "ours_psp")])
def test_the_proposed_rows_run_sec3s_dilations_12_on_1x_and_2_on_half(table: str, row: str) -> None:
    _, cfg = composed(table, row)
    assert list(cfg.model.scales) == [1.0, 0.5] and cfg.fusion.diverse_dilations
    assert stream_dilations(cfg.fusion.dilations, cfg.model.scales, cfg.fusion.large_dilation_on) == (12, 2)


def test_the_card_states_both_placements_and_names_a_valid_override_for_the_other() -> None:
    said = PAPER_CARD.statements["diverse_dilations"]
    assert "2 for small scale and 12 for large scale" in said  # Sec. 3
    assert "large scale object or region in small scale stream" in said  # Sec. 2.1
    assert "fusion.large_dilation_on=large_scale" in said
    other = "fusion.large_dilation_on=small_scale"
    assert other in said and other.split("=")[1] in LARGE_DILATION_ON
    assert stream_dilations([2, 12], [1.0, 0.5], "small_scale") == (2, 12)
    assert "score maps" in PAPER_CARD.statements["recalibration_on_logits"]
