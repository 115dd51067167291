import pytest

from boxseg.data.split import SplitSpec, split_full_weak
from boxseg.errors import BoxsegError

IDS = [f"im{i:03d}" for i in range(50)]


def test_split_is_deterministic_and_disjoint():
    f1, w1 = split_full_weak(IDS, SplitSpec(num_full=10, seed=3))
    f2, w2 = split_full_weak(IDS, SplitSpec(num_full=10, seed=3))
    f3, _ = split_full_weak(IDS, SplitSpec(num_full=10, seed=4))
    assert f1 == f2 and w1 == w2 and f1 != f3
    assert len(f1) == 10 and set(f1).isdisjoint(w1) and set(f1) | set(w1) == set(IDS)
    assert f1 == sorted(f1) and w1 == sorted(w1)  # split order kept


def test_split_from_list(tmp_path):
    lst = tmp_path / "f.txt"
    lst.write_text("im004\nim001\n")
    full, weak = split_full_weak(IDS, SplitSpec(full_list=lst))
    assert full == ["im001", "im004"] and len(weak) == 48


@pytest.mark.parametrize(
    "spec, msg",
    [
        (SplitSpec(num_full=51), "between 1 and the 50"),
        (SplitSpec(num_full=0), "between 1"),
        (SplitSpec(), "--num-full"),
    ],
)
def test_split_errors(spec, msg):
    with pytest.raises(BoxsegError, match=msg):
        split_full_weak(IDS, spec)


def test_split_list_with_unknown_id(tmp_path):
    lst = tmp_path / "f.txt"
    lst.write_text("nope\n")
    with pytest.raises(BoxsegError, match="not in split"):
        split_full_weak(IDS, SplitSpec(full_list=lst))
