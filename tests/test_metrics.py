"""Recall@K / NDCG@K on hand-computed cases."""
import numpy as np
import pytest

from jaxrec.metrics import rank_metrics_np


def test_hand_computed():
  ranked = np.array([[5, 3, 9, 1, 0, 2, 4, 6, 7, 8],   # target 5 at rank 0
                     [1, 2, 3, 4, 5, 6, 7, 8, 9, 0],   # target 7 at rank 6
                     [1, 2, 3, -1, -1, -1, -1, -1, -1, -1]])  # target 7 absent (short list)
  m = rank_metrics_np(ranked, np.array([5, 7, 7]), ks=(1, 5, 10, 20), ndcg_ks=(5, 10))
  assert m["recall@1"] == pytest.approx(1 / 3)
  assert m["recall@5"] == pytest.approx(1 / 3)
  assert m["recall@10"] == pytest.approx(2 / 3)
  assert "recall@20" not in m       # a K above the list length (10) is not reported
  assert m["ndcg@5"] == pytest.approx(1 / 3)
  assert m["ndcg@10"] == pytest.approx((1 + 1 / np.log2(8)) / 3)
