from speechllm.model.ctc import StreamingCollapse, collapse, run_lengths


def test_collapse_merges_repeats_and_drops_blanks():
    assert collapse([3, 1, 1, 3, 2, 2, 1], blank=3) == [1, 2, 1]
    assert collapse([1, 3, 1], blank=3) == [1, 1]  # a blank between two equal labels keeps both
    assert collapse([], blank=0) == []


def test_collapse_continues_from_the_previous_call():
    assert collapse([1, 2], blank=0, previous=1) == [2]
    c = StreamingCollapse(blank=9)
    assert c.push([1, 1, 9, 2]) + c.push([2, 2, 9, 2, 3]) + c.push([]) + c.push([3]) == [1, 2, 2, 3]


def test_run_lengths():
    assert run_lengths([3, 3, 1, 1, 1, 3, 7]) == ([3, 1, 3, 7], [2, 3, 1, 1])
    assert run_lengths([]) == ([], [])
