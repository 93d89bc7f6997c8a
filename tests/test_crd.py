"""CRD (Tian et al. 2020): the loss on a tiny memory bank by hand, the bank update, a distill run, bad sizes."""

from __future__ import annotations

import math

import pytest
import torch
from mlflow import MlflowClient

from mentor.config import ConfigError, validate_document
from mentor.config.document import Document
from mentor.pipeline import run_experiment
from mentor.tracking.store import tracking_uri
from mentor_plugins.contrastive import CRD, NCE_EPS


def built(n=4, d=2, k=2, t=0.5, m=0.5, labels=None, negatives="exact"):
    loss = CRD(feat_dim=d, nce_k=k, nce_t=t, nce_m=m, negatives=negatives)
    loss.dataset_size = n
    loss.dataset_labels = torch.arange(n) % 2 if labels is None else torch.tensor(labels)
    loss.build({"flatten": torch.Size([1, 3])}, {"flatten": torch.Size([1, 5])})
    return loss


def unit(*xs):
    norm = math.sqrt(sum(x * x for x in xs))
    return [x / norm for x in xs]


def nce_by_hand(scores, n):
    """scores: rows of [positive, negatives...] already divided by Z."""
    k = len(scores[0]) - 1
    noise = k / n
    total = 0.0
    for row in scores:
        total += math.log(row[0] / (row[0] + noise + NCE_EPS))
        total += sum(math.log(noise / (p + noise + NCE_EPS)) for p in row[1:])
    return -total / len(scores)


def test_crd_loss_and_bank_update_on_a_tiny_memory_by_hand():
    n, t, m = 4, 0.5, 0.5
    loss = built(n=n, t=t, m=m)
    bank_s = [unit(1, 0), unit(0, 1), unit(1, 1), unit(-1, 1)]
    bank_t = [unit(1, 2), unit(2, -1), unit(-1, -1), unit(0, 1)]
    loss.memory_s.copy_(torch.tensor(bank_s))
    loss.memory_t.copy_(torch.tensor(bank_t))
    v_s = [unit(3, 1), unit(-1, 2)]
    v_t = [unit(2, 1), unit(1, -3)]
    index = [2, 0]
    negatives = [[1, 3], [2, 2]]  # a row may repeat, as uniform sampling allows

    def side(v, bank):
        raw = [[math.exp(sum(a * b for a, b in zip(bank[r], v[i], strict=True)) / t)
                for r in [index[i], *negatives[i]]] for i in range(2)]
        z = sum(sum(row) for row in raw) / (2 * 3) * n  # the first batch's mean score x N
        return [[x / z for x in row] for row in raw]

    expected = nce_by_hand(side(v_s, bank_t), n) + nce_by_hand(side(v_t, bank_s), n)
    value = loss.contrast(torch.tensor(v_s), torch.tensor(v_t), torch.tensor(index), torch.tensor(negatives))
    assert math.isclose(value.item(), expected, rel_tol=1e-5)
    # each image's bank row moves to normalize(m * old + (1 - m) * new); the other rows stay
    for bank, v, old in ((loss.memory_s, v_s, bank_s), (loss.memory_t, v_t, bank_t)):
        for i, row in enumerate(index):
            moved = unit(*[m * a + (1 - m) * b for a, b in zip(old[row], v[i], strict=True)])
            assert bank[row].tolist() == pytest.approx(moved, abs=1e-6)
        for row in set(range(n)) - set(index):
            assert bank[row].tolist() == pytest.approx(old[row], abs=1e-7)
    assert loss.z.tolist()[0] > 0  # Z is fixed now: a second call keeps it
    z = loss.z.clone()
    loss.contrast(torch.tensor(v_s), torch.tensor(v_t), torch.tensor(index), torch.tensor(negatives))
    assert torch.equal(loss.z, z)


def test_exact_negatives_are_the_other_classes_rows_without_replacement_on_a_hand_built_bank():
    loss = built(n=6, k=4, labels=[0, 0, 1, 1, 2, 2])  # 4 rows outside each class: all of them are drawn
    negatives = loss.draw_negatives(torch.tensor([0, 2, 5]))
    assert [sorted(row) for row in negatives.tolist()] == [[2, 3, 4, 5], [0, 1, 4, 5], [0, 1, 2, 3]]
    loss = built(n=9, k=3, labels=[0, 0, 0, 1, 1, 1, 2, 2, 2])
    torch.manual_seed(0)
    for _ in range(50):
        rows = loss.draw_negatives(torch.tensor([0, 4, 8]))
        assert all(len(set(row)) == 3 for row in rows.tolist())  # without replacement
        assert all(r // 3 != anchor // 3 for anchor, row in zip([0, 4, 8], rows.tolist(), strict=True) for r in row)


def test_uniform_negatives_may_be_the_anchors_class_as_before():
    loss = built(n=9, k=3, labels=[0, 0, 0, 1, 1, 1, 2, 2, 2], negatives="uniform")
    torch.manual_seed(0)
    rows = torch.cat([loss.draw_negatives(torch.tensor([0])) for _ in range(50)])
    assert bool((rows // 3 == 0).any())  # a third of the rows are class 0's: 150 draws find some


def test_more_exact_negatives_than_other_class_images_is_refused():
    with pytest.raises(ValueError, match="nce_k 5 is more than the 4 images outside the largest class"):
        built(n=6, k=5, labels=[0, 0, 1, 1, 2, 2])


def test_crd_trains_its_heads_and_the_teacher_head_gets_gradients():
    loss = built(n=10, d=4, k=3)
    from mentor.losses import Outputs

    out = Outputs(student_logits=torch.zeros(2, 2), student_features={"flatten": torch.randn(2, 3)},
                  teacher_features={"flatten": torch.randn(2, 5)}, index=torch.tensor([1, 7]))
    loss(out).backward()
    assert loss.embed_s.weight.grad.abs().sum() > 0 and loss.embed_t.weight.grad.abs().sum() > 0


def distill_config(tiny_config, crd_params):
    c = dict(tiny_config)
    c["tracking"] = {"log_model": False}
    c["stages"] = [
        {"name": "teacher", "kind": "train", "model": "teacher", "epochs": 1, "batch_size": 32},
        {"name": "crd", "kind": "distill", "teacher": "teacher", "student": "student", "epochs": 2, "batch_size": 32,
         "losses": [{"name": "cross_entropy"}, {"name": "crd", "weight": 0.8, "params": crd_params}]},
    ]
    return c


@pytest.mark.slow
def test_a_distill_stage_with_crd_runs_and_logs_its_term(workdir, plugins, tiny_config):
    config = distill_config(tiny_config, {"feat_dim": 8, "nce_k": 16})
    results = run_experiment(validate_document(Document("t", config), plugins.registry), plugins)
    assert "best.test.accuracy" in results["crd"].metrics
    client = MlflowClient(tracking_uri())
    [stage] = [r for r in client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
               if r.data.tags.get("mentor.stage") == "crd" and r.data.tags.get("mentor.kind") == "stage"]
    history = client.get_metric_history(stage.info.run_id, "train/loss/crd")
    assert len(history) == 2 and all(math.isfinite(h.value) and h.value > 0 for h in history)


@pytest.mark.slow
def test_more_negatives_than_images_is_a_located_error(workdir, plugins, tiny_config):
    config = distill_config(tiny_config, {"nce_k": 100_000})
    with pytest.raises(ConfigError) as info:
        run_experiment(validate_document(Document("t", config), plugins.registry), plugins)
    assert "nce_k 100000 must be below" in str(info.value) and "stages[1].losses[1].params" in str(info.value)
