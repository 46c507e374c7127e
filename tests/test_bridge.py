"""The token bridge (merge and threshold arithmetic, top1 == text rows, posterior) and Whisper's text decoder."""

from __future__ import annotations

import copy

import pytest
import torch

from speechllm.config import BridgeConfig, SpeechLLMConfig
from speechllm.inference.generation import GenerationConfig, generate
from speechllm.model.bridge import bridge_embeddings, ctc_bridge, ctc_steps, token_embeddings
from speechllm.model.whisper_decoder import DecoderArch, WhisperTextDecoder

V, D = 10, 6
BLANK = V  # the last column


def confident(labels: list[int], sharp: float = 20.0) -> torch.Tensor:
    """CTC logits (S, V+1) whose best label at frame t is labels[t] (BLANK for a blank frame)."""
    logits = torch.zeros(len(labels), V + 1)
    for t, label in enumerate(labels):
        logits[t, label] = sharp
    return logits


def test_ctc_steps_merges_repeats_and_keeps_labels_apart_across_a_blank():
    logits = confident([3, 3, BLANK, 3, 5, 5, 5, BLANK, BLANK, 7])
    step_logits, labels = ctc_steps(logits, blank_threshold=0.5)
    assert labels.tolist() == [3, 3, 5, 7]
    assert step_logits.shape == (4, V)  # the blank column is gone
    # A merged step holds the mean of its frames' logits.
    logits[4, 1], logits[5, 1] = 4.0, 8.0
    step_logits, _ = ctc_steps(logits, blank_threshold=0.5)
    assert step_logits[2, 1].item() == pytest.approx(4.0)  # (4 + 8 + 0) / 3


def test_blank_threshold_decides_which_frames_are_dropped():
    # Frame 1: blank posterior ~0.73 (logit 1 vs 0 for token 2 and -inf elsewhere).
    logits = torch.full((3, V + 1), -1e4)
    logits[0, 2] = 10.0
    logits[1, 2], logits[1, BLANK] = 0.0, 1.0
    logits[2, 4] = 10.0
    blank_p = logits[1].softmax(-1)[BLANK].item()
    assert 0.7 < blank_p < 0.75
    assert ctc_steps(logits, blank_threshold=0.7)[1].tolist() == [2, 4]  # dropped: 2 and 2 would merge ...
    assert ctc_steps(logits, blank_threshold=0.8)[1].tolist() == [2, 4]  # ... kept: merged with frame 0
    logits[0, 2], logits[0, 5] = -1e4, 10.0  # now frame 1's label differs from frame 0's
    assert ctc_steps(logits, blank_threshold=0.7)[1].tolist() == [5, 4]
    assert ctc_steps(logits, blank_threshold=0.8)[1].tolist() == [5, 2, 4]


def test_an_all_blank_audio_keeps_its_least_blank_frame():
    logits = confident([BLANK, BLANK, BLANK])
    logits[1, 6] = 19.0
    step_logits, labels = ctc_steps(logits, blank_threshold=0.5)
    assert labels.tolist() == [6] and step_logits.shape == (1, V)


def test_top1_gives_exactly_the_texts_embedding_rows_for_a_confident_path():
    torch.manual_seed(0)
    table = torch.randn(V, D)
    text_ids = [4, 1, 1, 8]  # a repeated token needs a blank between its frames
    frames = [4, 4, BLANK, 1, BLANK, 1, 1, 8, BLANK]
    logits = torch.stack([confident(frames), confident(frames[:5] + [BLANK] * 4)])
    embeds, lengths, paths = ctc_bridge(logits, torch.tensor([9, 5]), table, "top1", blank_threshold=0.5)
    assert lengths.tolist() == [4, 2] and paths == [text_ids, [4, 1]]
    assert torch.equal(embeds[0], table[text_ids])
    assert torch.equal(embeds[1, :2], table[[4, 1]]) and torch.equal(embeds[1, 2:], torch.zeros(2, D))


def test_posterior_is_the_renormalised_weighted_sum_and_tends_to_top1_when_cold():
    torch.manual_seed(1)
    table = torch.randn(V, D)
    step_logits = torch.randn(3, V)
    labels = step_logits.argmax(-1)
    got = bridge_embeddings(step_logits, labels, table, "posterior", temperature=2.0)
    torch.testing.assert_close(got, (step_logits / 2.0).softmax(-1) @ table)
    cold = bridge_embeddings(step_logits, labels, table, "posterior", temperature=1e-4)
    torch.testing.assert_close(cold, table[labels])


def test_token_embeddings_pads_and_rejects_an_empty_path():
    table = torch.arange(V * D, dtype=torch.float32).view(V, D)
    embeds, lengths = token_embeddings([[1, 2, 3], [9]], table)
    assert lengths.tolist() == [3, 1] and torch.equal(embeds[1, 0], table[9])
    with pytest.raises(ValueError, match="non-empty"):
        token_embeddings([[1], []], table)


def test_bridge_config_checks():
    with pytest.raises(ValueError, match=r"bridge\.mode"):
        BridgeConfig(mode="soft")
    with pytest.raises(ValueError, match="posterior"):
        BridgeConfig(mode="posterior", recognizer="whisper")
    with pytest.raises(ValueError, match=r"adaptor\.select"):
        SpeechLLMConfig(bridge=BridgeConfig(mode="top1"))
    with pytest.raises(ValueError, match="30s"):
        SpeechLLMConfig(bridge=BridgeConfig(mode="top1", recognizer="whisper"))


@pytest.mark.parametrize("mode", ["posterior", "top1"])
def test_a_ctc_bridged_model_gives_the_llm_rows_of_its_own_table(tiny_config, tone, mode):
    from speechllm.model import build_speech_llm

    tiny_config.adaptor.select = "blank_removal"
    tiny_config.bridge = BridgeConfig(mode=mode, blank_threshold=1.0)
    torch.manual_seed(0)
    model = build_speech_llm(tiny_config).eval()
    table = model.embedding_table()
    with torch.no_grad():
        embeds, lengths = model.speech_embeddings([tone(1.0), tone(2.0, seed=1)])
    assert lengths.tolist()[0] >= 1 and embeds.shape[-1] == table.shape[1]
    rows = embeds[0, : lengths[0]]
    if mode == "top1":  # every position is exactly one row of the table
        assert bool((torch.cdist(rows, table).min(-1).values == 0).all())
    else:  # a convex combination: inside the table's bounding box
        assert bool((rows <= table.max(0).values + 1e-5).all() and (rows >= table.min(0).values - 1e-5).all())
    answer = generate(
        model,
        [[{"role": "user", "content": [{"type": "audio", "audio": tone(1.0)}]}]],
        GenerationConfig(max_new_tokens=3),
    )
    assert isinstance(answer[0], str)


def test_ctc_embed_training_never_runs_the_llm(tiny_config, monkeypatch):
    from speechllm.model import build_speech_llm
    from speechllm.training.stages import StageModel

    tiny_config.adaptor.select = "blank_removal"
    tiny_config.bridge = BridgeConfig(mode="top1")
    model = build_speech_llm(tiny_config)
    stage = StageModel(model, "ctc_embed")

    def no_llm(*args, **kwargs):
        raise AssertionError("the LLM ran while training the bridge")

    monkeypatch.setattr(model.llm, "forward", no_llm)
    frames = [torch.randn(40, model.encoder.dim), torch.randn(28, model.encoder.dim)]
    out = stage({"frames": frames, "transcripts": ["hello world", "hi"]})
    out["loss"].backward()
    grads = [p.grad for p in model.adaptor.parameters() if p.requires_grad]
    assert torch.isfinite(out["loss"]) and any(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in model.llm.parameters())


# ---------------------------------------------------------------------------- Whisper's text decoder


@pytest.fixture()
def hf_whisper():
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    config = WhisperConfig(
        vocab_size=40, num_mel_bins=80, d_model=32, encoder_layers=1, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
        max_source_positions=50, max_target_positions=24, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        decoder_start_token_id=1,
    )  # fmt: skip
    torch.manual_seed(3)
    return WhisperForConditionalGeneration(config).eval()


def ours_from_hf(hf) -> WhisperTextDecoder:
    c = hf.config
    arch = DecoderArch(
        vocab_size=c.vocab_size, d_model=c.d_model, n_layers=c.decoder_layers, n_heads=c.decoder_attention_heads,
        ffn_dim=c.decoder_ffn_dim, max_positions=c.max_target_positions, prompt=[1, 5], eot=2, suppress=[7],
        suppress_begin=[2], specials_from=None,
    )  # fmt: skip
    decoder = WhisperTextDecoder(arch, detokenize=lambda ids: " ".join(map(str, ids)))
    prefix = "model.decoder."
    sd = {k[len(prefix) :]: v for k, v in hf.state_dict().items() if k.startswith(prefix)}
    missing, unexpected = decoder.load_state_dict(sd, strict=False)
    assert not missing and not unexpected
    return decoder.eval()


def test_decoder_logits_match_hugging_face(hf_whisper):
    ours = ours_from_hf(hf_whisper)
    states = torch.randn(2, 50, 32)
    tokens = torch.tensor([[1, 5, 9, 12], [1, 5, 3, 30]])
    with torch.no_grad():
        hidden = hf_whisper.model.decoder(input_ids=tokens, encoder_hidden_states=states).last_hidden_state
        expected = hf_whisper.proj_out(hidden[:, -1])
        got = ours._step(tokens, 0, ours._cross_cache(states), None)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_greedy_with_cache_equals_recomputing_every_step_and_respects_suppression(hf_whisper):
    ours = ours_from_hf(hf_whisper)
    torch.manual_seed(4)
    states = torch.randn(3, 50, 32)
    lengths = torch.tensor([50, 31, 12])
    got = ours.greedy(states, lengths, max_tokens=8)
    for i in range(3):
        s = states[i : i + 1, : int(lengths[i])]
        seq = [1, 5]
        for step in range(8):
            logits = ours._step(torch.tensor([seq]), 0, ours._cross_cache(s), None)[0]
            logits[7] = float("-inf")
            if step == 0:
                logits[2] = float("-inf")
            token = int(logits.argmax())
            if token == 2:
                break
            seq.append(token)
        assert got[i] == seq[2:]
        assert 7 not in got[i]


def test_beam_search_of_width_one_is_greedy_and_wider_beams_score_no_worse(hf_whisper):
    ours = ours_from_hf(hf_whisper)
    torch.manual_seed(5)
    states = torch.randn(1, 50, 32)
    greedy = ours.greedy(states, max_tokens=6)[0]
    assert ours.beam_search(states, beam_size=1, max_tokens=6) == greedy
    assert ours.transcribe(states, max_tokens=6, beam_size=3)[0] == " ".join(map(str, ours.beam_search(states, 3, 6)))


def test_beams_sharing_one_samples_encoder_cache_attend_as_with_a_copy_per_beam(hf_whisper):
    ours = ours_from_hf(hf_whisper)
    torch.manual_seed(6)
    layer = ours.layers[0]
    states, x = torch.randn(1, 50, 32), torch.randn(4, 3, 32)
    shared = ours._cross_cache(states)[0]
    copied = {key: value.expand(4, -1, -1, -1).contiguous() for key, value in shared.items()}
    with torch.no_grad():
        got = layer(x, dict(shared), None, None)
        want = layer(x, copied, None, None)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="batch 2 do not fit queries for batch 4"):
        layer(x, {key: value.expand(2, -1, -1, -1) for key, value in shared.items()}, None, None)


def test_beam_candidates_are_the_best_pairs_over_the_whole_vocabulary(hf_whisper):
    """nbest ranks each hypothesis' best 2B tokens; a search ranking every (hypothesis, token) pair
    finishes the same hypotheses with the same scores."""
    ours = ours_from_hf(hf_whisper)
    ours.arch.eot = 30  # a token this decoder often ranks high, so that hypotheses finish within 12 steps
    torch.manual_seed(7)
    states, beam = torch.randn(1, 50, 32), 3
    a = ours.arch
    suppress, begin = ours._suppressed(states.device)
    seqs, scores, finished = [[]], torch.zeros(1), []
    for step in range(12):
        rows = torch.tensor([a.prompt + s for s in seqs])
        with torch.no_grad():
            logits = torch.stack([ours._step(r[None], 0, ours._cross_cache(states), None)[0] for r in rows])
        logp = logits.masked_fill(begin if step == 0 else suppress, float("-inf")).log_softmax(-1)
        total = (scores[:, None] + logp).flatten()
        kept = []
        for value, index in zip(*total.topk(2 * beam)):
            hyp, token = divmod(int(index), a.vocab_size)
            if token == a.eot:
                finished.append((seqs[hyp], float(value)))
                continue
            kept.append(([*seqs[hyp], token], value))
            if len(kept) == beam:
                break
        if len(finished) >= beam:
            break
        seqs, scores = [k[0] for k in kept], torch.stack([k[1] for k in kept])
    if not finished:
        finished = [(s, float(v)) for s, v in zip(seqs, scores)]
    got = ours.nbest(states, beam, 12)
    assert len({len(ids) for ids, _ in got}) > 1  # hypotheses finished, at different steps
    assert [ids for ids, _ in got] == [ids for ids, _ in finished]
    assert [lp for _, lp in got] == pytest.approx([lp for _, lp in finished], abs=1e-4)


@pytest.mark.parametrize(
    ("heard", "typed"),
    [
        ("which city is the capital of austria.", "Which city is the capital of austria?"),
        ("what is 3.5 plus 2", "What is 3.5 plus 2?"),  # a decimal point ends no sentence
        ("What do you call a word? that means the same.", "What do you call a word? That means the same."),
        ("hello there. how are you", "Hello there. How are you?"),
        ("Mr. Smith is here.", "Mr. Smith is here."),
        ("tell me a joke!", "Tell me a joke!"),
        ("", ""),
    ],
)
def test_tidy_transcript_capitalises_sentences_and_ends_questions_with_a_question_mark(heard, typed):
    from speechllm.model.bridge import tidy_transcript

    assert tidy_transcript(heard) == typed
    assert tidy_transcript(typed) == typed  # what is already tidy stays as it is

    def words(text: str) -> list[str]:
        return [w.strip(".?!").lower() for w in text.split()]

    assert words(tidy_transcript(heard)) == words(heard)  # the words themselves never change


@pytest.mark.parametrize("tidy", [True, False])
def test_a_whisper_bridged_model_hears_and_reads_the_recognizers_transcript(tiny_config, tone, tidy):
    """The wiring of the default's connector, with a random tiny decoder whose tokens all spell one
    lowercase question: `hear` gives that text (tidied or not), and the LLM reads its own token rows."""
    from speechllm.model import assemble
    from speechllm.model.encoder import load_whisper_encoder
    from speechllm.weights.llm import load_llm

    tiny_config.encoder.padding = "30s"
    tiny_config.bridge = BridgeConfig(mode="top1", recognizer="whisper", beam_size=1, max_tokens=4, tidy=tidy)
    encoder = load_whisper_encoder(tiny_config.encoder)
    llm, tokenizer = load_llm(tiny_config.llm)
    width = encoder.config.d_model  # the decoder's cross-attention reads the encoder's states
    arch = DecoderArch(vocab_size=16, d_model=width, n_layers=1, n_heads=4, ffn_dim=64, max_positions=16,
                       prompt=[1], eot=2, suppress=[], suppress_begin=[2], specials_from=None)  # fmt: skip
    torch.manual_seed(0)
    recognizer = WhisperTextDecoder(arch, detokenize=lambda ids: " which city is big.").eval()
    model = assemble(tiny_config, encoder, llm, tokenizer, recognizer).eval()
    with torch.no_grad():
        heard = model.hear([tone(1.0)])
        embeds, lengths = model.speech_embeddings([tone(1.0)])
    expected = "Which city is big?" if tidy else "which city is big."
    assert heard == [expected]
    ids = tokenizer.encode(expected, add_special_tokens=False)
    assert lengths.tolist() == [len(ids)]
    torch.testing.assert_close(embeds[0, : len(ids)], model.embedding_table()[ids])


def test_a_bfloat16_recognizer_multiplies_in_bfloat16_and_keeps_norms_and_logits_float32(hf_whisper):
    """bridge.precision: the text decoder's linear layers and token table in bfloat16, its norms,
    positions and logits float32; logits close to the float32 decoder's, for greedy and beam."""
    from speechllm.model.precision import LowPrecisionLinear

    decoder = ours_from_hf(hf_whisper)
    half = copy.deepcopy(decoder)
    half.lower_precision(torch.bfloat16)
    assert half.matmul_dtype == torch.bfloat16 and decoder.matmul_dtype == torch.float32
    linears = [m for m in half.modules() if isinstance(m, LowPrecisionLinear)]
    assert len(linears) == 2 * len(half.layers) * 4 + 2 * len(half.layers)  # 2 attentions x q/k/v/o, fc1/fc2
    assert all(m.weight.dtype == torch.bfloat16 for m in linears)
    assert all(p.dtype == torch.float32 for n, p in half.named_parameters() if "norm" in n or "embed" in n)
    assert half.logits_table is not None and half.logits_table.dtype == torch.bfloat16
    assert set(half.state_dict()) == set(decoder.state_dict())  # same names: loads the same checkpoints
    states = torch.randn(1, 6, decoder.arch.d_model)
    tokens = torch.tensor([decoder.arch.prompt])
    with torch.no_grad():
        full = decoder._step(tokens, 0, decoder._cross_cache(states), None)
        low = half._step(tokens, 0, half._cross_cache(states), None)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, full, rtol=0.05, atol=0.05 * float(full.abs().max()))
    for beam in (1, 2):
        assert len(half.transcribe(states, max_tokens=3, beam_size=beam)) == 1
    with pytest.raises(ValueError, match=r"bridge\.precision"):
        BridgeConfig(precision="float16")


def test_screened_logits_are_exact_float32_for_each_rows_best_k_and_close_elsewhere(hf_whisper):
    """bridge.logits screened: every logit estimated against a bfloat16 table, then each row's best k
    recomputed in float32, so the tokens a beam can take have exactly the float32 decoder's logits."""
    decoder = ours_from_hf(hf_whisper)
    screened = copy.deepcopy(decoder)
    k = 6
    screened.screen_logits(k)
    assert screened.screen_table is not None and screened.screen_table.dtype == torch.bfloat16
    torch.manual_seed(1)
    states = torch.randn(1, 6, decoder.arch.d_model)
    tokens = torch.tensor([decoder.arch.prompt, [1, 9]])
    with torch.no_grad():
        full = decoder._step(tokens, 0, decoder._cross_cache(states.expand(2, -1, -1)), None)  # 2, V
        fast = screened._step(tokens, 0, screened._cross_cache(states.expand(2, -1, -1)), None)
    assert fast.dtype == torch.float32
    best = full.topk(k, dim=-1).indices  # the estimates rank these first too (random logits: well apart)
    torch.testing.assert_close(fast.gather(-1, best), full.gather(-1, best), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fast, full, rtol=0.02, atol=0.02 * float(full.abs().max()))
    assert not torch.equal(fast, full)  # the rest are bfloat16 estimates, not a second exact pass
    with torch.no_grad():  # a beam of 3 takes each row's best 6: the same hypotheses, near-equal scores
        got, want = screened.nbest(states, 3, 5), decoder.nbest(states, 3, 5)
    assert [ids for ids, _ in got] == [ids for ids, _ in want]
    assert [logp for _, logp in got] == pytest.approx([logp for _, logp in want], abs=0.05)
    half = copy.deepcopy(decoder)
    half.lower_precision(torch.bfloat16)
    with pytest.raises(ValueError, match="lower-precision"):
        half.screen_logits()
    with pytest.raises(ValueError, match="k >= 1"):
        decoder.screen_logits(0)


def test_auto_screening_follows_native_bfloat16_and_names_a_bad_choice():
    from speechllm.model.precision import cpu_has_native_bf16, resolve_screening

    cpu = torch.device("cpu")
    assert resolve_screening("auto", cpu) == cpu_has_native_bf16()
    assert resolve_screening("screened", cpu) and not resolve_screening("exact", cpu)
    with pytest.raises(ValueError, match="logits"):
        resolve_screening("int8", cpu)
    with pytest.raises(ValueError, match=r"bridge\.logits"):
        BridgeConfig(logits="bfloat16")


def test_auto_precision_is_bfloat16_only_where_the_cpu_multiplies_it_natively(tmp_path):
    from speechllm.model.precision import cpu_has_native_bf16, resolve_precision

    amx, plain = tmp_path / "amx", tmp_path / "plain"
    amx.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f amx_bf16 amx_tile\n")
    plain.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    assert cpu_has_native_bf16(str(amx)) and not cpu_has_native_bf16(str(plain))
    assert not cpu_has_native_bf16(str(tmp_path / "missing"))
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bfloat16" if cpu_has_native_bf16() else "float32")
    assert resolve_precision("float32", cpu) == "float32" and resolve_precision("bfloat16", cpu) == "bfloat16"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("int8", cpu)
