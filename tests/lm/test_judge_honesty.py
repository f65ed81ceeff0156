"""Judges that say what they know (issue 14, item 2; mopo_core/lm/judge.py and the prefmodel
command): a constant judge scores accuracy 0.5 and log-loss ln 2 (never the label base rate),
every accuracy comes with its 95% interval beside the base rate, a training that ends no better
than constant is refused (or kept only with a flag and a loud warning in its metadata), such a
judge is refused for scoring when loaded, and ``prefmodel train --skip-bad-rows`` leaves bad rows
out and counts them. Tiny encoders built here; nothing is downloaded.

The "mirrored" data make a judge that cannot beat a constant one by construction: every pair
``(x, y1, y2, l)`` comes with its mirror ``(x, y2, y1, l)``, the same label, so on any split by
prompt a margin ``m`` on one is ``-m`` on the other and their mean log-loss is at least ln 2,
with equality only at ``m = 0``: early stopping keeps the starting (all-zero) weights."""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch

from mopo_core.cli.main import main
from mopo_core.data.preferences import PreferenceDataset, save_preferences
from mopo_core.lm.judge import (
    META_FILE,
    HeadSettings,
    PreferenceModel,
    RewardHeads,
    SentenceEncoder,
    UninformativeJudgeError,
    UninformativeJudgeWarning,
    bt_metrics,
    train_preference_model,
    wilson_interval,
)
from tests.lm_fixtures import save_tiny_encoder

WORDS = [f"w{i}" for i in range(30)]
OBJECTIVES = ("helpfulness", "harmlessness")
LN2 = math.log(2)


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    return save_tiny_encoder(tmp_path_factory.mktemp("encoder"), WORDS, hidden=16)


@pytest.fixture(scope="module")
def encoder(encoder_dir):
    return SentenceEncoder.load(encoder_dir, max_length=32)


def text(rng, low, high):
    return " ".join(rng.choice(WORDS, size=rng.integers(low, high + 1)))


def mirrored(n_prompts: int = 40, b_share: float = 0.7, seed: int = 0) -> PreferenceDataset:
    """Mirrored pairs (module docstring); response b wins ``b_share`` of the pairs on both objectives."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n_prompts):
        prompt, y1, y2 = f"w{i % 30} " + text(rng, 1, 3), text(rng, 3, 6), text(rng, 3, 6)
        if y1 == y2:
            continue
        label = 0.0 if i < round(b_share * n_prompts) else 1.0
        for a, b in ((y1, y2), (y2, y1)):
            records.append({"prompt": prompt, "response_a": a, "response_b": b,
                            "labels": dict.fromkeys(OBJECTIVES, label)})
    return PreferenceDataset.from_records(records)


def learnable(n_prompts: int = 60, seed: int = 1) -> list[dict]:
    """PKU-format rows: helpfulness prefers the longer response, harmlessness the one with fewer w0-w4."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_prompts):
        for _ in range(3):
            r0, r1 = text(rng, 1, 8), text(rng, 1, 8)
            if r0 == r1 or len(r0.split()) == len(r1.split()):
                continue
            risky = [sum(w in WORDS[:5] for w in r.split()) for r in (r0, r1)]
            rows.append({"prompt": text(rng, 2, 4) + f" q{i}", "response_0": r0, "response_1": r1,
                         "better_response_id": int(len(r1.split()) > len(r0.split())),
                         "safer_response_id": int(risky[1] < risky[0])})
    return rows


# ----------------------------------------------------------------------------- metrics


def test_a_zero_margin_is_half_a_vote_and_the_base_rate_is_reported():
    labels = torch.tensor([[0.0]] * 7 + [[1.0]] * 3 + [[0.5]])  # b wins 7 of the 10 decided pairs
    (m,) = bt_metrics(torch.zeros(11, 1), labels, ("h",)).values()
    assert m["accuracy"] == 0.5 and m["n_scored"] == 10  # not 0.7 (the old "zero margin votes b")
    assert m["base_rate"] == pytest.approx(0.7) and m["log_loss"] == pytest.approx(LN2)
    assert m["log_loss_constant"] == pytest.approx(LN2)
    assert (m["ci_low"], m["ci_high"]) == pytest.approx(wilson_interval(5.0, 10))
    assert m["ci_low"] < 0.5 < m["ci_high"]
    mixed = torch.tensor([[1.0], [0.0], [-2.0], [3.0]])  # right, half, right, wrong
    (m,) = bt_metrics(mixed, torch.tensor([[1.0], [1.0], [0.0], [0.0]]), ("h",)).values()
    assert m["accuracy"] == pytest.approx(2.5 / 4) and m["base_rate"] == 0.5


def test_wilson_interval_matches_the_formula():
    low, high = wilson_interval(62, 100)
    assert (low, high) == pytest.approx((0.5221, 0.7090), abs=1e-4)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_a_judge_with_all_zero_heads_scores_half_not_the_base_rate(encoder):
    data = mirrored()
    judge = PreferenceModel(encoder, RewardHeads(encoder.dim, 2), OBJECTIVES)
    for name, m in judge.evaluate(data).items():
        assert m["accuracy"] == 0.5, (name, m)
        assert m["base_rate"] == pytest.approx(0.7) and m["log_loss"] == pytest.approx(LN2)


# ----------------------------------------------------------------------------- training and loading


def test_training_that_ends_at_the_initial_weights_is_refused(encoder):
    with pytest.raises(UninformativeJudgeError, match=r"helpfulness: early stopping kept the starting weights") as info:
        train_preference_model(mirrored(), encoder, settings=HeadSettings(max_epochs=4, patience=2))
    message = str(info.value)
    assert "harmlessness" in message and "ln 2 = 0.6931" in message and "base rate 0." in message


def test_an_uninformative_judge_is_kept_only_flagged_and_refused_for_scoring(encoder, tmp_path):
    with pytest.warns(UninformativeJudgeWarning, match="UNINFORMATIVE JUDGE"):
        judge = train_preference_model(mirrored(), encoder, settings=HeadSettings(max_epochs=4, patience=2),
                                       allow_uninformative=True)
    assert judge.info["uninformative"] == sorted(OBJECTIVES)
    assert "UNINFORMATIVE JUDGE" in judge.info["warning"] and "Do not score runs" in judge.info["warning"]
    check = judge.info["judge_check"]
    assert check["split"] == "validation" and "ln 2" in check["rule"]
    assert {v["verdict"] for v in check["objectives"].values()} == {"uninformative"}
    assert all(torch.count_nonzero(p) == 0 for p in (judge.heads.weight,))
    folder = judge.save(tmp_path / "judge")
    saved = json.loads((folder / META_FILE).read_text())["info"]
    assert saved["uninformative"] == sorted(OBJECTIVES) and "UNINFORMATIVE" in saved["warning"]
    with pytest.raises(UninformativeJudgeError, match="no better than constant on helpfulness"):
        PreferenceModel.load(folder, encoder=encoder)
    with pytest.warns(UninformativeJudgeWarning):
        PreferenceModel.load(folder, encoder=encoder, allow_uninformative=True)
    # a judge saved before verdicts were recorded: refused by its best epoch 0 and its zero heads
    meta = json.loads((folder / META_FILE).read_text())
    for key in ("judge_check", "uninformative", "warning"):
        del meta["info"][key]
    (folder / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(UninformativeJudgeError, match="best epoch 0"):
        PreferenceModel.load(folder, encoder=encoder)


def test_an_informative_judge_is_saved_and_loaded_without_warning(encoder, tmp_path):
    from mopo_core.data.public_formats import load_public

    path = tmp_path / "pku.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in learnable()))
    data = load_public(path, "pku").dataset
    train, validation, test = data.split((0.6, 0.2, 0.2), seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UninformativeJudgeWarning)
        judge = train_preference_model(train, encoder, validation, test, HeadSettings(max_epochs=60, patience=10))
        assert "uninformative" not in judge.info
        assert {v["verdict"] for v in judge.info["judge_check"]["objectives"].values()} <= {"informative", "weak"}
        PreferenceModel.load(judge.save(tmp_path / "judge"))


# ----------------------------------------------------------------------------- command line


def test_prefmodel_train_refuses_an_uninformative_judge_unless_allowed(encoder_dir, tmp_path, capsys):
    data = tmp_path / "mirrored.jsonl"
    save_preferences(mirrored(), data)
    out = tmp_path / "judge"
    argv = ["--store", str(tmp_path / "runs.sqlite"), "prefmodel", "train", "--data", str(data), "--encoder",
            str(encoder_dir), "--out", str(out), "--max-length", "32", "--max-epochs", "4", "--patience", "2"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "error: training ended no better than a constant judge" in err and "helpfulness" in err
    assert not out.exists()
    assert main([*argv, "--allow-uninformative"]) == 0
    printed = capsys.readouterr()
    assert "WARNING: UNINFORMATIVE JUDGE" in printed.err and "saved to" in printed.err
    header, *rows = printed.out.splitlines()
    assert header.split() == ["split", "objective", "accuracy", "95%", "CI", "base_rate", "log_loss", "ln2",
                              "scored", "pairs"]
    test_row = next(r.split() for r in rows if r.startswith("test") and "helpfulness" in r)
    assert test_row[2] == "0.500" and test_row[5] == "0.693" and test_row[6] == "0.693"
    assert main(["--store", str(tmp_path / "runs.sqlite"), "prefmodel", "eval", "--model", str(out),
                 "--data", str(data)]) == 0  # evaluating it is allowed, loudly
    printed = capsys.readouterr()
    assert "WARNING: UNINFORMATIVE JUDGE" in printed.err
    row = next(r.split() for r in printed.out.splitlines() if "helpfulness" in r)
    assert row[2] == "0.500" and row[4] == "0.700"  # accuracy 0.5 beside the base rate 0.7


def test_prefmodel_prints_the_base_rate_beside_the_accuracy(encoder_dir, tmp_path, capsys):
    data = tmp_path / "pku.jsonl"
    rows = learnable()
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "judge"
    argv = ["--store", str(tmp_path / "runs.sqlite"), "prefmodel", "train", "--data", str(data), "--format", "pku",
            "--encoder", str(encoder_dir), "--out", str(out), "--max-length", "32", "--max-epochs", "60", "--json"]
    assert main(argv) == 0
    metrics = json.loads(capsys.readouterr().out)
    for split in ("train", "validation", "test"):
        for name in OBJECTIVES:
            m = metrics[split][name]
            assert 0.5 <= m["base_rate"] <= 1 and m["ci_low"] <= m["accuracy"] <= m["ci_high"]
            assert m["log_loss_constant"] == pytest.approx(LN2)
    assert main(["--store", str(tmp_path / "runs.sqlite"), "prefmodel", "eval", "--model", str(out), "--data",
                 str(data), "--format", "pku"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "base_rate" in lines[0] and "ln2" in lines[0] and "95% CI" in lines[0]
    share_b = np.mean([r["better_response_id"] for r in rows])
    row = next(line.split() for line in lines if "helpfulness" in line)
    assert float(row[4]) == pytest.approx(max(share_b, 1 - share_b), abs=5e-4)


def test_prefmodel_train_skip_bad_rows_skips_and_counts(encoder_dir, tmp_path, capsys):
    rows = learnable()
    for i in (3, 10, 20):
        rows[i]["response_1"] = "   "  # an empty response
    data = tmp_path / "pku.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    store = tmp_path / "runs.sqlite"
    argv = ["--store", str(store), "prefmodel", "train", "--data", str(data), "--format", "pku", "--encoder",
            str(encoder_dir), "--out", str(tmp_path / "judge"), "--max-length", "32", "--max-epochs", "3",
            "--allow-uninformative", "--json"]
    assert main(argv) == 2  # a bad input (ValueError): refused without --skip-bad-rows
    assert "empty or whitespace-only text" in capsys.readouterr().err
    assert main([*argv, "--skip-bad-rows"]) == 0
    printed = capsys.readouterr()
    assert f"skipped 3 bad row(s) of {data}" in printed.err and "row 4: " in printed.err
    metrics = json.loads(printed.out)
    assert sum(metrics[s]["helpfulness"]["n_pairs"] for s in metrics) == len(rows) - 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UninformativeJudgeWarning)
        info = PreferenceModel.load(tmp_path / "judge", allow_uninformative=True).info
    assert info["data"]["skip_bad_rows"] is True
    assert main(["--store", str(store), "prefmodel", "eval", "--model", str(tmp_path / "judge"), "--data", str(data),
                 "--format", "pku", "--skip-bad-rows"]) == 0
    assert "skipped 3 bad row(s)" in capsys.readouterr().err
    native = tmp_path / "native.jsonl"
    save_preferences(mirrored(), native)
    assert main([*argv[:5], str(native), *argv[8:], "--skip-bad-rows"]) == 2
    assert "skip_bad_rows: only for public formats" in capsys.readouterr().err


# ----------------------------------------------------------------------------- scoring runs


def test_a_dataset_run_refuses_an_uninformative_judge(tmp_path):
    """The dataset task loads its judge with PreferenceModel.load: a judge with all-zero heads (no
    recorded verdict, as an older file) is refused there, naming the field --prefmodel."""
    from mopo_core.training.dataset_task import DatasetSetup, DatasetTask, SetupError
    from tests.lm_fixtures import SPLIT, save_chat_checkpoint, tiny_encoder, write_preference_file

    data = write_preference_file(tmp_path / "prefs.jsonl")
    checkpoint = save_chat_checkpoint(tmp_path / "tiny-chat")
    encoder = tiny_encoder(tmp_path / "encoder")
    judge = PreferenceModel(encoder, RewardHeads(encoder.dim, 2), OBJECTIVES, {"seen_prompt_digests": []})
    folder = judge.save(tmp_path / "zero-judge")
    setup = DatasetSetup(str(data), str(checkpoint), str(folder), split=SPLIT, max_response_tokens=5,
                         eval_samples=2, max_new_tokens=3)
    with pytest.raises(SetupError, match=r"prefmodel: .*no better than constant on helpfulness") as info:
        DatasetTask(setup)
    assert info.value.field == "prefmodel"


def test_the_setup_check_refuses_a_judge_recorded_as_uninformative_without_loading_it(tmp_path):
    """check_judge reads metadata only (the Train page's and check_setup's pre-check): a recorded
    'uninformative' verdict is refused there, before any run is queued."""
    from mopo_core.training.dataset_task import SetupError, check_judge
    from tests.lm_fixtures import tiny_encoder

    encoder = tiny_encoder(tmp_path / "encoder")
    info = {"seen_prompt_digests": [],
            "judge_check": {"objectives": {"helpfulness": {"verdict": "uninformative",
                                                           "reasons": ["validation accuracy 0.500 is not above 0.5"]},
                                           "harmlessness": {"verdict": "informative", "reasons": []}}}}
    folder = PreferenceModel(encoder, RewardHeads(encoder.dim, 2), OBJECTIVES, info).save(tmp_path / "flagged")
    with pytest.raises(SetupError, match=r"no better than a constant judge.*helpfulness: validation accuracy"):
        check_judge(folder, OBJECTIVES, ["an unseen prompt"])
