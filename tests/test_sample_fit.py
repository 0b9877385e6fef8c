"""``aitune_triton.sample_fit``: inputs at any shape cut from recorded samples, paired inputs kept paired."""

import numpy as np
import torch

from aitune_triton.sample_fit import fit, fit_cost, fitted


def test_fit_tiles_and_crops_numpy_and_torch_alike():
    arr = np.arange(6).reshape(2, 3)
    assert fit(arr, (3, 2)).tolist() == [[0, 1], [3, 4], [0, 1]]
    assert fit(torch.from_numpy(arr), (3, 2)).tolist() == [[0, 1], [3, 4], [0, 1]]
    assert fit(torch.zeros(0, 3, dtype=torch.bfloat16), (2, 3)).dtype == torch.bfloat16
    assert fit(np.zeros((0, 3), np.int32), (2, 3)).shape == (2, 3)


def test_fitted_takes_the_sample_needing_fewest_crops_and_keeps_mask_rows_with_their_ids():
    short = {"ids": torch.tensor([[1, 2, 3]]), "mask": torch.tensor([[1, 1, 0]])}
    long = {"ids": torch.tensor([[4, 5, 6, 7, 8], [9, 8, 7, 6, 5]]),
            "mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])}
    shapes = {"ids": (4, 5), "mask": (4, 5)}
    assert fit_cost(long, shapes, 1) < fit_cost(short, shapes, 1)  # short would be tiled on its sequence: fine,
    got = fitted([short, long], shapes, 1)                          # but long is nearer
    assert got["ids"].tolist() == [[4, 5, 6, 7, 8], [9, 8, 7, 6, 5]] * 2
    assert got["mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]] * 2
    assert all(int(row.sum()) > 0 for row in got["mask"])  # every row keeps a token to attend to
