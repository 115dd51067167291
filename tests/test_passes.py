"""Forward passes over stored images (passes.py): same-size images of one fixed group
together, the CPU's pixel budget, and only passes that hold work."""

import numpy as np
import torch

from boxseg.passes import CPU_PASS_PIXELS, forward_passes

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # (a device name needs no GPU)


def test_passes_group_same_size_images_within_fixed_groups():
    sizes = np.array([[8, 8], [8, 9], [8, 8], [8, 8], [8, 9], [8, 8]])
    passes = forward_passes(sizes, list(range(6)), 4, CUDA)
    assert passes == [(0, [0, 2, 3]), (0, [1]), (1, [4]), (1, [5])]


def test_a_pass_keeps_its_done_images_and_passes_without_work_are_left_out():
    """Image 1 alone is to do: its group's pass still holds 0 and 2 (the same batch as an
    uninterrupted run), and group 1 (nothing to do) gives no pass."""
    sizes = np.full((6, 2), 8)
    assert forward_passes(sizes, [1], 3, CUDA) == [(0, [0, 1, 2])]
    assert forward_passes(sizes, [1, 4], 3, CUDA) == [(0, [0, 1, 2]), (1, [3, 4, 5])]


def test_cpu_passes_hold_at_most_the_pixel_budget():
    side = int(CPU_PASS_PIXELS**0.5)  # one image fills the budget
    big = np.full((4, 2), side)
    assert forward_passes(big, [0, 1, 2, 3], 4, CPU) == [(0, [0]), (0, [1]), (0, [2]), (0, [3])]
    assert forward_passes(big, [0, 1, 2, 3], 4, CUDA) == [(0, [0, 1, 2, 3])]
    half = np.full((4, 2), side // 2)  # four fit
    assert forward_passes(half, [2], 4, CPU) == [(0, [0, 1, 2, 3])]
    huge = np.full((2, 2), side * 2)  # bigger than the budget: still one image a pass
    assert forward_passes(huge, [0, 1], 2, CPU) == [(0, [0]), (0, [1])]
    skipped = forward_passes(big, [2], 4, CPU)
    assert skipped == [(0, [2])]  # single-image passes without work are left out
