"""The cell grid (cells.py): void (NaN) cells are left out alike by pooling, upsampling and
crop decoding, which share one void-aware resampling."""

import torch

from boxseg.cells import pool_logits, resample_cells, resample_void_aware, upsample_logits

NAN = float("nan")


def test_a_pooled_block_is_void_only_when_all_its_pixels_are():
    x = torch.tensor([[[1.0, NAN, NAN, NAN, NAN, NAN], [3.0, NAN, 5.0, 7.0, NAN, NAN]]])
    pooled = pool_logits(x, 2)  # blocks: {1, 3}, {5, 7}, all void
    torch.testing.assert_close(pooled[0, 0, :2], torch.tensor([2.0, 6.0]))
    assert torch.isnan(pooled[0, 0, 2])


def test_decoded_pixels_are_void_where_void_cells_outweigh_the_others():
    cells = torch.tensor([[[[2.0, NAN]]]])
    # upsampling by 2: pixel columns read at cells 0, 0.25, 0.75, 1 (half-pixel centres)
    up = upsample_logits(cells, 2, 2, 4)[0, 0]
    torch.testing.assert_close(up[:, :2], torch.full((2, 2), 2.0))
    assert torch.isnan(up[:, 2:]).all()
    cols = torch.tensor([[0.0, 0.4, 0.6, 1.0]])
    crop = resample_cells(cells, torch.zeros(1, 1), cols)[0, 0, 0]
    torch.testing.assert_close(crop[:2], torch.tensor([2.0, 2.0]))
    assert torch.isnan(crop[2:]).all()


def test_void_aware_resampling_normalises_by_the_weight_of_non_void_values():
    x = torch.tensor([[[[4.0, NAN, 8.0, NAN]]]])
    void = torch.isnan(x)

    def pairs(t: torch.Tensor) -> torch.Tensor:  # the mean of neighbouring pairs
        return torch.nn.functional.avg_pool2d(t, (1, 2))

    torch.testing.assert_close(resample_void_aware(pairs, x, void), torch.tensor([[[[4.0, 8.0]]]]))
    x[..., 2] = NAN
    half = resample_void_aware(pairs, x, torch.isnan(x))  # a lone void pair: void
    assert half[0, 0, 0, 0] == 4.0 and torch.isnan(half[0, 0, 0, 1])
