"""Targets beyond one class per example: per-token logits [B, L, C] with a mask, in the loss contract, the
loop's metrics and the checks before a run."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import yaml

from mentor import IGNORE_INDEX, Outputs, flatten_positions
from mentor.cli import main
from mentor_plugins.losses import KD, CrossEntropy


def _tokens():
    """2 sequences of 3 positions over 2 classes; the second sequence's last position is padding."""
    student = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]],
                            [[0.0, 0.0], [3.0, 1.0], [5.0, -5.0]]])
    teacher = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [0.0, 1.0]],
                            [[1.0, 1.0], [0.0, 0.0], [9.0, 9.0]]])
    labels = torch.tensor([[0, 1, 1], [1, 0, IGNORE_INDEX]])
    return student, teacher, labels


def test_cross_entropy_per_token_is_the_mean_over_the_tokens_that_count():
    student, _, labels = _tokens()
    by_hand = [math.log(1 + math.exp(-2)), math.log(1 + math.exp(-1)), math.log(2), math.log(2),
               math.log(1 + math.exp(-2))]  # -log softmax of the true class at the 5 counted positions
    loss = CrossEntropy()(Outputs(student_logits=student, labels=labels))
    assert loss.item() == pytest.approx(sum(by_hand) / 5, abs=1e-6)


def test_kd_per_token_is_the_mean_kl_over_the_tokens_the_mask_keeps():
    student, teacher, _ = _tokens()
    mask = torch.tensor([[True, True, False], [True, True, False]])
    expected = 0.0
    for s, t in [(student[0, 0], teacher[0, 0]), (student[0, 1], teacher[0, 1]), (student[1, 0], teacher[1, 0]),
                 (student[1, 1], teacher[1, 1])]:  # KL(teacher_T || student_T) by hand at T = 2, times T^2
        p = F.softmax(t / 2, 0)
        expected += float((p * (p.log() - F.log_softmax(s / 2, 0))).sum()) * 4
    loss = KD(temperature=2.0)(Outputs(student_logits=student, teacher_logits=teacher, mask=mask))
    assert loss.item() == pytest.approx(expected / 4, abs=1e-6)


def test_per_example_outputs_are_left_as_they_are():
    logits, labels = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    kept, kept_labels = flatten_positions(logits, labels)
    assert kept is logits and kept_labels is labels
    kept, kept_labels = flatten_positions(*_tokens()[::2])
    assert kept.shape == (5, 2) and kept_labels.tolist() == [0, 1, 1, 1, 0]


def test_the_loops_metrics_count_tokens_not_padding():
    from mentor.engine.loop import evaluate
    from mentor.engine.runtime import Runtime

    student, _, labels = _tokens()

    class Fixed(torch.nn.Module):
        def forward(self, x):
            return student[x.long().view(-1)]

    batches = [(torch.tensor([0.0, 1.0]), labels)]

    class Once:
        def epoch(self, e):
            return iter(batches)

    found = evaluate(Fixed(), Once(), Runtime(torch.device("cpu"), None, False, False, "none"))
    assert found["accuracy"] == pytest.approx(3 / 5)  # argmax right at (0,0), (0,1), (1,1); (0,2) is a tie -> 0
    assert found["loss"] == pytest.approx(CrossEntropy()(Outputs(student_logits=student, labels=labels)).item())


def test_a_method_or_loss_that_takes_one_class_per_example_is_refused_for_tokens(tmp_path, capsys, monkeypatch):
    config = {"name": "tok", "data": {"source": "random_images", "params": {"train_size": 40, "test_size": 8}},
              "models": {"t": {"name": "small_cnn"}, "s": {"name": "small_cnn"}},
              "stages": [{"name": "t", "kind": "train", "model": "t"},
                         {"name": "d", "kind": "distill", "teacher": "t", "student": "s",
                          "losses": [{"name": "kd"}, {"name": "dist"}]},
                         {"name": "p", "kind": "pseudo_label", "teacher": "t", "student": "s",
                          "selection": {"name": "all"}}]}
    path = tmp_path / "tok.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    from mentor.data.types import DataInfo

    original = DataInfo.__init__

    def per_token(self, *args, **kwargs):  # the same data, said to be one class per token
        original(self, *args, **{**kwargs, "targets": "token"})

    monkeypatch.setattr(DataInfo, "__init__", per_token)
    assert main(["validate", str(path), "--data"]) == 2
    err = capsys.readouterr().err
    assert "tok.yaml:22:5: stages[1].losses[1].name: loss 'dist' takes one class per example; data " \
        "source 'random_images' gives one class per token" in err
    config["stages"][1]["losses"] = [{"name": "kd"}, {"name": "cross_entropy"}]
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["validate", str(path), "--data"]) == 2
    assert "stages[2].kind: stage kind 'pseudo_label' takes one class per example; data source 'random_images' " \
        "gives one class per token" in capsys.readouterr().err
