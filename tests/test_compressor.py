"""Compressors: exact lengths, exact values on hand-made inputs, padded batches equal each sample alone."""

from __future__ import annotations

import math

import pytest
import torch

from speechllm.config import CompressorConfig
from speechllm.model.compressor import (
    CTCCompressor,
    PoolCompressor,
    StackCompressor,
    build_compressor,
)

# ----------------------------------------------------------------------------- stack and pool


@pytest.mark.parametrize("cls", [StackCompressor, PoolCompressor])
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_lengths_and_shapes_are_ceil_t_over_k(cls, k):
    comp = cls(k)
    for t in range(1, 10):
        lengths = torch.arange(1, t + 1)  # every possible length for this T
        out = comp(torch.randn(t, t, 3), lengths)
        assert out.x.shape == (t, math.ceil(t / k), comp.output_dim(3))
        assert out.lengths.tolist() == [math.ceil(n / k) for n in range(1, t + 1)]
        assert out.ctc_logits is None
    assert comp.output_dim(3) == (3 * k if cls is StackCompressor else 3)


def test_stack_concatenates_k_frames_and_zero_fills_the_last_group():
    x = torch.arange(10.0).reshape(1, 5, 2)  # frames [0,1] [2,3] [4,5] [6,7] [8,9]
    out = StackCompressor(2)(x, torch.tensor([5]))
    expected = torch.tensor([[[0.0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 0]]])
    assert torch.equal(out.x, expected)
    assert out.lengths.tolist() == [3]


def test_stack_k3_on_arange():
    x = torch.arange(6.0).reshape(1, 6, 1)
    out = StackCompressor(3)(x, torch.tensor([4]))  # frames 4 and 5 are padding
    assert torch.equal(out.x, torch.tensor([[[0.0, 1, 2], [3, 0, 0]]]))
    assert out.lengths.tolist() == [2]


def test_pool_averages_only_the_real_frames_of_a_short_last_group():
    x = torch.arange(5.0).reshape(1, 5, 1)
    out2 = PoolCompressor(2)(x, torch.tensor([5]))
    assert torch.equal(out2.x, torch.tensor([[[0.5], [2.5], [4.0]]]))  # last group is frame 4 alone
    out3 = PoolCompressor(3)(x, torch.tensor([5]))
    assert torch.equal(out3.x, torch.tensor([[[1.0], [3.5]]]))  # mean(0,1,2), mean(3,4)
    assert out3.lengths.tolist() == [2]


def test_pool_ignores_padded_frames_inside_a_group():
    x = torch.tensor([[[2.0], [4.0], [100.0], [100.0]]])
    out = PoolCompressor(4)(x, torch.tensor([2]))
    assert torch.equal(out.x, torch.tensor([[[3.0]]]))


@pytest.mark.parametrize("cls", [StackCompressor, PoolCompressor])
@pytest.mark.parametrize("k", [2, 3])
def test_padded_batch_gives_each_sample_what_it_gives_alone(cls, k):
    torch.manual_seed(0)
    lengths = torch.tensor([10, 7, 1, 5])
    x = torch.randn(4, 10, 4)
    for i, n in enumerate(lengths.tolist()):
        x[i, n:] = 1e4 * (i + 1)  # garbage in the padding must not leak
    comp = cls(k)
    batch = comp(x, lengths)
    assert batch.lengths.tolist() == [math.ceil(n / k) for n in lengths.tolist()]
    for i, n in enumerate(lengths.tolist()):
        alone = comp(x[i : i + 1, :n], torch.tensor([n]))
        m = int(batch.lengths[i])
        assert alone.x.shape[1] == m
        torch.testing.assert_close(batch.x[i, :m], alone.x[0], rtol=0, atol=0)
        assert batch.x[i, m:].abs().sum() == 0  # zeros past each length


def test_stack_and_pool_pass_gradients_to_real_frames_only():
    x = torch.randn(1, 5, 2, requires_grad=True)
    (StackCompressor(2)(x, torch.tensor([3])).x.sum() + PoolCompressor(2)(x, torch.tensor([3])).x.sum()).backward()
    assert x.grad is not None
    assert (x.grad[0, :3] != 0).all() and (x.grad[0, 3:] == 0).all()


# ----------------------------------------------------------------------------- CTC

# Frames of width 4: the first three channels are a one-hot label (0 = blank), the last a distinct
# value. The head reads the label channels only, so each frame's argmax label is known.
LABELS = [0, 1, 1, 0, 2, 2, 2, 1, 0, 1]


def _frames(labels: list[int]) -> torch.Tensor:
    x = torch.zeros(len(labels), 4)
    x[torch.arange(len(labels)), torch.tensor(labels)] = 1.0
    x[:, 3] = torch.arange(len(labels), dtype=torch.float32) * 10
    return x  # T, 4


def _ctc(mode: str) -> CTCCompressor:
    comp = CTCCompressor(input_dim=4, vocab_size=3, mode=mode, blank_id=0)
    with torch.no_grad():
        comp.head.weight.copy_(torch.eye(3, 4))  # logits = the label channels
        comp.head.bias.zero_()
    return comp


def test_ctc_blank_removal_keeps_exactly_the_non_blank_frames():
    x = _frames(LABELS)
    out = _ctc("blank_removal")(x[None], torch.tensor([10]))
    keep = [i for i, lab in enumerate(LABELS) if lab != 0]  # 1, 2, 4, 5, 6, 7, 9
    assert out.lengths.tolist() == [7]
    assert torch.equal(out.x[0], x[keep])


def test_ctc_frame_average_merges_runs_of_one_label():
    x = _frames(LABELS)
    out = _ctc("frame_average")(x[None], torch.tensor([10]))
    # Runs: [0] blank, [1,2] label 1, [3] blank, [4,5,6] label 2, [7] label 1, [8] blank, [9] label 1.
    # 2 -> 1 without a blank starts a new run; a blank between two 1s splits them (CTC's "a _ a").
    expected = torch.stack([x[1:3].mean(0), x[4:7].mean(0), x[7], x[9]])
    assert out.lengths.tolist() == [4]
    assert torch.equal(out.x[0], expected)
    assert out.x[0, :, 3].tolist() == [15.0, 50.0, 70.0, 90.0]


@pytest.mark.parametrize(("mode", "expected_lengths"), [("blank_removal", [7, 2]), ("frame_average", [4, 1])])
def test_ctc_padded_batch_equals_each_sample_alone(mode, expected_lengths):
    comp = _ctc(mode)
    x = torch.stack([_frames(LABELS), _frames([0, 1, 1, 0] + [2] * 6)])
    x[1, 4:, :3] = torch.tensor([0.0, 0.0, 50.0])  # padding that would be label 2 if it leaked
    lengths = torch.tensor([10, 4])
    batch = comp(x, lengths)
    assert batch.lengths.tolist() == expected_lengths
    assert batch.x.shape == (2, expected_lengths[0], 4)
    for i, n in enumerate(lengths.tolist()):
        alone = comp(x[i : i + 1, :n], torch.tensor([n]))
        m = expected_lengths[i]
        assert torch.equal(batch.x[i, :m], alone.x[0])
        assert batch.x[i, m:].abs().sum() == 0


@pytest.mark.parametrize("mode", ["blank_removal", "frame_average"])
def test_ctc_all_blank_keeps_the_single_least_blank_frame(mode):
    comp = _ctc(mode)
    x = torch.zeros(1, 3, 4)
    x[0, :, 0] = torch.tensor([5.0, 2.0, 3.0])  # blank logit
    x[0, :, 1] = torch.tensor([1.0, 1.9, 0.0])  # label-1 logit: frame 1 is the closest call
    x[0, :, 3] = torch.tensor([10.0, 20.0, 30.0])
    out = comp(x, torch.tensor([3]))
    assert out.lengths.tolist() == [1]
    assert torch.equal(out.x[0], x[0, 1:2])


def test_ctc_logits_are_the_head_on_every_frame():
    comp = _ctc("blank_removal")
    torch.manual_seed(0)
    x = torch.randn(2, 6, 4)
    out = comp(x, torch.tensor([6, 3]))
    assert out.ctc_logits is not None and out.ctc_logits.shape == (2, 6, 3)
    torch.testing.assert_close(out.ctc_logits, comp.head(x))


def test_ctc_head_trains_through_the_logits_not_through_frame_selection():
    comp = _ctc("frame_average")
    x = _frames(LABELS)[None].requires_grad_(True)
    out = comp(x, torch.tensor([10]))
    out.x.sum().backward()
    assert comp.head.weight.grad is None  # selection is an argmax: no gradient to the head
    assert x.grad is not None and x.grad[0, 1, 3] == 0.5  # a frame of a 2-frame run gets half
    out.ctc_logits.sum().backward()
    assert comp.head.weight.grad is not None


def test_ctc_non_zero_blank_id():
    comp = CTCCompressor(input_dim=4, vocab_size=3, mode="blank_removal", blank_id=2)
    with torch.no_grad():
        comp.head.weight.copy_(torch.eye(3, 4))
        comp.head.bias.zero_()
    x = _frames(LABELS)
    out = comp(x[None], torch.tensor([10]))
    keep = [i for i, lab in enumerate(LABELS) if lab != 2]
    assert torch.equal(out.x[0], x[keep])


def test_ctc_constructor_checks():
    with pytest.raises(ValueError, match=r"vocab_size must be >= 2.*got 1"):
        CTCCompressor(4, 1, "blank_removal")
    with pytest.raises(ValueError, match=r"blank_id must be in \[0, 3\), got 3"):
        CTCCompressor(4, 3, "blank_removal", blank_id=3)


# ----------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "comp", [StackCompressor(2), PoolCompressor(2), _ctc("blank_removal")], ids=["stack", "pool", "ctc"]
)
def test_bad_inputs_raise_value_error(comp):
    x = torch.randn(2, 5, 4)
    with pytest.raises(ValueError, match=r"must be \(B, T, D\), got shape \(5, 4\)"):
        comp(x[0], torch.tensor([5]))
    with pytest.raises(ValueError, match=r"lengths must have shape \(2,\), got \(3,\)"):
        comp(x, torch.tensor([5, 5, 5]))
    with pytest.raises(ValueError, match=r"lengths must be in \[1, 5\], got \[6, 5\]"):
        comp(x, torch.tensor([6, 5]))
    with pytest.raises(ValueError, match=r"lengths must be in \[1, 5\], got \[0, 5\]"):
        comp(x, torch.tensor([0, 5]))


# ----------------------------------------------------------------------------- build_compressor


def test_build_compressor_each_kind():
    stack = build_compressor(CompressorConfig(kind="stack", k=3), input_dim=8)
    assert isinstance(stack, StackCompressor) and stack.k == 3 and stack.output_dim(8) == 24
    pool = build_compressor(CompressorConfig(kind="pool", k=5), input_dim=8)
    assert isinstance(pool, PoolCompressor) and pool.k == 5 and pool.output_dim(8) == 8
    ctc = build_compressor(
        CompressorConfig(kind="ctc", ctc_mode="frame_average", ctc_vocab_size=7, ctc_blank_id=6), input_dim=8
    )
    assert isinstance(ctc, CTCCompressor)
    assert (ctc.head.in_features, ctc.head.out_features, ctc.mode, ctc.blank_id) == (8, 7, "frame_average", 6)
    assert ctc.output_dim(8) == 8


def test_build_ctc_compressor_sizes_its_head_from_the_llm_vocabulary():
    ctc = build_compressor(CompressorConfig(kind="ctc"), input_dim=8, llm_vocab_size=10)
    assert ctc.head.out_features == 11  # the LLM's tokens + blank
    with pytest.raises(ValueError, match="ctc_vocab_size or an LLM vocabulary"):
        build_compressor(CompressorConfig(kind="ctc"), input_dim=8)


def test_unknown_compressor_kind_names_the_choices():
    with pytest.raises(ValueError, match=r"compressor.kind must be one of \['stack', 'pool', 'ctc'\], got 'nope'"):
        CompressorConfig(kind="nope")
    config = CompressorConfig()
    config.kind = "nope"  # past the config's own check
    with pytest.raises(ValueError, match="unknown compressor kind 'nope'; expected one of stack, pool, ctc"):
        build_compressor(config, input_dim=8)
