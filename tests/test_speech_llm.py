"""The composed SpeechLLM on tiny random checkpoints: prompts, scattering, masks, freezing, save/load, generation."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from speechllm.config import LoraConfig
from speechllm.inference.generation import GenerationConfig, eos_token_ids, generate, stream_generate
from speechllm.model import build_speech_llm, from_pretrained, part_of, save_pretrained
from speechllm.model.speech_llm import position_ids
from speechllm.weights.errors import WeightsError


def speech_msg(audio, text="What is said?"):
    return [{"role": "user", "content": [{"type": "audio", "audio": audio}, {"type": "text", "text": text}]}]


def test_placeholder_expands_to_the_compressed_length(tiny_model, tone):
    audio = tone(1.3)  # 130 mel frames -> 65 encoder frames -> ceil(65 / 4) = 17 positions
    batch = tiny_model.prepare([speech_msg(audio)])
    n_speech = int((batch.input_ids == tiny_model.processor.speech_token_id).sum())
    assert n_speech == 17
    _, lengths = tiny_model.speech_embeddings([audio])
    assert lengths.tolist() == [17]


def test_speech_embeddings_are_scattered_in_order(tiny_model, tone):
    a, b = tone(1.0, seed=1), tone(0.5, seed=2)
    conv = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "first"},
                {"type": "audio", "audio": a},
                {"type": "text", "text": "then"},
                {"type": "audio", "audio": b},
            ],
        }
    ]
    batch = tiny_model.prepare([conv])
    speech, lengths = tiny_model.speech_embeddings([a, b])
    positions = (batch.input_ids[0] == tiny_model.processor.speech_token_id).nonzero().squeeze(-1)
    expected = torch.cat([speech[0, : lengths[0]], speech[1, : lengths[1]]])
    torch.testing.assert_close(batch.inputs_embeds[0, positions], expected)
    # Text positions keep the LLM's own embeddings.
    text_pos = batch.input_ids[0] != tiny_model.processor.speech_token_id
    ref = tiny_model.llm.get_input_embeddings()(batch.input_ids[0, text_pos])
    torch.testing.assert_close(batch.inputs_embeds[0, text_pos], ref)


def test_count_mismatch_names_both_counts(tiny_model, tone):
    batch = tiny_model.prepare([speech_msg(tone(1.0))])
    speech, lengths = tiny_model.speech_embeddings([tone(1.0)])
    with pytest.raises(ValueError, match=r"13 speech positions but the audio gives 12"):
        tiny_model.embed(batch.input_ids, speech, lengths - 1)
    with pytest.raises(ValueError, match=r"1 speech placeholders but 2 audio segments"):
        tiny_model.processor.expand([tiny_model.processor.speech_token_id], [3, 4])


def test_speech_token_typed_as_text_is_rejected(tiny_model):
    with pytest.raises(ValueError, match="reserved token"):
        tiny_model.prepare([[{"role": "user", "content": "hi <speech> there"}]])


def test_batch_items_match_their_single_runs(tiny_model, tone):
    convs = [speech_msg(tone(1.3, seed=3)), speech_msg(tone(0.6, seed=4), "Longer question text here?")]
    batch = tiny_model.prepare(convs, left_pad=True)
    with torch.no_grad():
        out = tiny_model.llm(
            inputs_embeds=batch.inputs_embeds,
            attention_mask=batch.attention_mask,
            position_ids=(batch.attention_mask.cumsum(-1) - 1).clamp(min=0),
        ).logits[:, -1]
        for i, conv in enumerate(convs):
            single = tiny_model.prepare([conv])
            ref = tiny_model.llm(inputs_embeds=single.inputs_embeds).logits[0, -1]
            torch.testing.assert_close(out[i], ref, atol=1e-4, rtol=1e-4)


def test_text_only_generation_matches_transformers(tiny_model):
    msgs = [{"role": "user", "content": "hello there"}]
    ours = generate(tiny_model, [msgs], GenerationConfig(max_new_tokens=12))
    tok = tiny_model.processor.tokenizer
    ids = tok(
        tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False),
        return_tensors="pt",
        add_special_tokens=False,
    )
    ref = tiny_model.llm.generate(**ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    ref_ids = [t for t in ref[0, ids.input_ids.shape[1] :].tolist() if t != 3]
    assert ours == [tok.decode(ref_ids, skip_special_tokens=True)]
    assert len(ours[0]) > 0


def test_batched_generation_equals_one_by_one(tiny_model, tone):
    convs = [speech_msg(tone(1.0, seed=5)), [{"role": "user", "content": "a longer text only prompt"}]]
    together = generate(tiny_model, convs, GenerationConfig(max_new_tokens=8))
    alone = [generate(tiny_model, [c], GenerationConfig(max_new_tokens=8))[0] for c in convs]
    assert together == alone


def test_stream_stops_at_max_new_tokens(tiny_model):
    msgs = [{"role": "user", "content": "x"}]
    batch = tiny_model.prepare([msgs])
    tok = tiny_model.processor.tokenizer
    ids = tok(tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False), return_tensors="pt",
              add_special_tokens=False)  # fmt: skip
    # transformers' greedy tokens, never stopping early: ours must be exactly their first N.
    ref = tiny_model.llm.generate(**ids, max_new_tokens=5, min_new_tokens=5, do_sample=False,
                                  pad_token_id=tok.pad_token_id)[0, ids.input_ids.shape[1] :].tolist()  # fmt: skip
    assert not set(ref) & eos_token_ids(tiny_model), f"the fixture's greedy answer {ref} must not hold an eos"
    for n in (1, 2, 5):
        steps = list(stream_generate(tiny_model, batch, GenerationConfig(max_new_tokens=n)))
        assert [s.shape for s in steps] == [(1,)] * n
        assert [int(s) for s in steps] == ref[:n]


def test_sampling_is_reproducible_with_a_seed(tiny_model):
    msgs = [[{"role": "user", "content": "sample me"}]]
    a = generate(tiny_model, msgs, GenerationConfig(max_new_tokens=8, do_sample=True, temperature=1.5, seed=7))
    b = generate(tiny_model, msgs, GenerationConfig(max_new_tokens=8, do_sample=True, temperature=1.5, seed=7))
    assert a == b


def test_prefix_mask_is_bidirectional_inside_the_prompt_only(tiny_model):
    tiny_model.config.prefix_attention = "bidirectional"
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])
    m = tiny_model.attention_mask_for(mask, torch.tensor([3, 4]))[:, 0]  # B, L, L
    # Row 0 is left-padded by 2: its prefix covers positions 2, 3, 4.
    assert bool(m[0, 2, 4]) and bool(m[0, 4, 2])  # prefix sees its own future
    assert not bool(m[0, 4, 5]) and bool(m[0, 5, 4])  # answer stays causal
    assert not m[0, 3, :2].any()  # pads are never attended
    assert bool(m[1, 0, 3]) and not bool(m[1, 0, 4]) and not bool(m[1, 4, 5])
    tiny_model.config.prefix_attention = "causal"
    assert torch.equal(tiny_model.attention_mask_for(mask, torch.tensor([3, 4])), mask)


def _logits(model, batch, inputs_embeds):
    """The LLM's logits (B, L, V) under the model's own prefix mask."""
    with torch.no_grad():
        return model.llm(
            inputs_embeds=inputs_embeds,
            attention_mask=model.attention_mask_for(batch.attention_mask, batch.prefix_lengths),
            position_ids=position_ids(batch.attention_mask),
        ).logits


@pytest.mark.parametrize("prefix_attention", ["causal", "bidirectional"])
def test_bidirectional_prefix_lets_speech_see_the_later_prompt_but_not_the_answer(tiny_model, tone, prefix_attention):
    tiny_model.config.prefix_attention = prefix_attention
    bidirectional = prefix_attention == "bidirectional"
    batch = tiny_model.prepare([speech_msg(tone(0.8))], answers=["ok then"], left_pad=False)
    speech = (batch.input_ids[0] == tiny_model.processor.speech_token_id).nonzero().squeeze(-1)
    prefix_end = int(batch.prefix_lengths[0])  # no padding: the prefix is positions 0 .. prefix_end - 1
    last_prompt, first_answer = prefix_end - 1, prefix_end
    assert int(speech[-1]) < last_prompt  # the question's text follows the audio
    assert bool((batch.labels[0, first_answer:] != -100).all()) and bool((batch.labels[0, :first_answer] == -100).all())

    mask = tiny_model.attention_mask_for(batch.attention_mask, batch.prefix_lengths)
    allowed = mask[0, 0] if bidirectional else torch.tril(torch.ones(mask.shape[1], mask.shape[1])).bool()
    assert bool(allowed[speech[0], last_prompt]) == bidirectional  # speech sees the later prompt text
    assert not bool(allowed[speech[0], first_answer])  # ... never the answer
    assert not bool(allowed[last_prompt, first_answer])
    assert not bool(allowed[first_answer, first_answer + 1])  # the answer stays causal
    assert bool(allowed[first_answer + 1, speech[0]]) and bool(allowed[first_answer + 1, first_answer])

    # Change the last prompt token: the logits at the speech positions follow it only when bidirectional.
    before = _logits(tiny_model, batch, batch.inputs_embeds)
    changed = batch.inputs_embeds.clone()
    changed[0, last_prompt] += 1.0
    after = _logits(tiny_model, batch, changed)
    speech_moved = (after[0, speech] - before[0, speech]).abs().max().item()
    assert (speech_moved > 1e-4) == bidirectional, speech_moved
    # Change the answer's second token: nothing before it moves, in either mode.
    changed = batch.inputs_embeds.clone()
    changed[0, first_answer + 1] += 1.0
    after = _logits(tiny_model, batch, changed)
    torch.testing.assert_close(after[0, : first_answer + 1], before[0, : first_answer + 1])
    assert (after[0, first_answer + 1] - before[0, first_answer + 1]).abs().max().item() > 1e-4


def test_training_labels_cover_only_the_answer(tiny_model, tone):
    batch = tiny_model.prepare([speech_msg(tone(0.5))], answers=["yes"], left_pad=False)
    labels = batch.labels[0]
    answer = labels[labels != -100].tolist()
    tok = tiny_model.processor.tokenizer
    assert tok.decode(answer) == "yes<|im_end|>\n"
    assert int(batch.prefix_lengths[0]) == int((labels == -100).sum())


def test_trainable_parameters_are_exactly_the_configured_parts(tiny_config):
    tiny_config.lora = LoraConfig(enabled=True, r=2, alpha=4)
    for parts in (["compressor", "adaptor"], ["adaptor", "lora"], ["encoder"], ["llm"], []):
        tiny_config.trainable = parts
        model = build_speech_llm(tiny_config)
        names = model.trainable_parameter_names()
        expected = {n for n, _ in model.named_parameters() if part_of(n) in parts}
        assert names == expected
        present = {part_of(n) for n, _ in model.named_parameters()}  # a stack compressor has no weights
        assert {part_of(n) for n in names} == set(parts) & present
    with pytest.raises(ValueError, match="unknown part"):
        model.set_trainable(["decoder"])


def test_stage_presets_freeze_encoder_and_llm(tiny_model):
    names = tiny_model.trainable_parameter_names()
    assert names and all(n.startswith("adaptor.") for n in names)  # stack compressor has no weights
    assert not any(p.requires_grad for p in tiny_model.encoder.parameters())
    assert not any(p.requires_grad for p in tiny_model.llm.parameters())


def test_save_writes_only_owned_weights_and_reloads_identically(tiny_config, tmp_path, tone):
    tiny_config.lora = LoraConfig(enabled=True, r=2, alpha=4)
    tiny_config.trainable = ["adaptor", "lora"]
    torch.manual_seed(3)
    model = build_speech_llm(tiny_config).eval()
    with torch.no_grad():  # LoRA B starts at zero; make it matter
        for n, p in model.llm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    out_dir = save_pretrained(model, tmp_path / "ckpt")
    saved = load_file(str(out_dir / "model.safetensors"))
    assert {part_of(n) for n in saved} == {"adaptor", "lora"}
    assert not any(n.startswith(("encoder.", "llm.model.embed")) for n in saved)
    reloaded = from_pretrained(out_dir)
    conv = [speech_msg(tone(0.7))]
    with torch.no_grad():
        a = model.prepare(conv).inputs_embeds
        b = reloaded.prepare(conv).inputs_embeds
    torch.testing.assert_close(a, b)
    assert generate(model, conv, GenerationConfig(max_new_tokens=6)) == generate(
        reloaded, conv, GenerationConfig(max_new_tokens=6)
    )
    assert (out_dir / "config.yaml").read_text().count("source:") == 2


def test_lora_disabled_gives_the_plain_llm(tiny_config):
    tiny_config.lora = LoraConfig(enabled=True, r=2, alpha=4)
    model = build_speech_llm(tiny_config).eval()
    with torch.no_grad():
        for n, p in model.llm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        with_lora = model.llm(input_ids=ids).logits
        with model.lora_disabled():
            plain = model.llm(input_ids=ids).logits
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_config.llm.source)
    with torch.no_grad():
        torch.testing.assert_close(plain, base(input_ids=ids).logits)
    assert not torch.allclose(with_lora, plain)


def test_broken_checkpoints_raise_clear_errors(tiny_model, tmp_path):
    with pytest.raises(WeightsError, match="not a speechllm checkpoint"):
        from_pretrained(tmp_path)
    out = save_pretrained(tiny_model, tmp_path / "ckpt")
    (out / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(WeightsError, match="cannot read weights"):
        from_pretrained(out)


def test_unknown_sources_raise(tiny_config, tmp_path):
    tiny_config.llm.source = str(tmp_path / "nope")
    with pytest.raises(WeightsError, match="does not exist"):
        build_speech_llm(tiny_config)
    tiny_config.llm.source = "bundled:gpt-5"
    with pytest.raises(WeightsError, match="unknown bundled LLM"):
        build_speech_llm(tiny_config)


def test_precomputed_frames_give_the_same_batch_as_audio(tiny_model, tone):
    audio = tone(0.9)
    features, feature_lengths = tiny_model.processor.log_mel([audio])
    with torch.no_grad():
        frames, lengths = tiny_model.encoder.encode(features, feature_lengths)
        from_audio = tiny_model.prepare([speech_msg(audio)], answers=["hi"])
        cached = [
            {
                "role": "user",
                "content": [{"type": "audio", "audio": "utt-1"}, {"type": "text", "text": "What is said?"}],
            }
        ]
        from_frames = tiny_model.prepare([cached], answers=["hi"], frames=[frames[0, : lengths[0]]])
    torch.testing.assert_close(from_audio.inputs_embeds, from_frames.inputs_embeds)
    assert torch.equal(from_audio.labels, from_frames.labels)
    with pytest.raises(ValueError, match="1 audio parts but 0 frame arrays"):
        tiny_model.prepare([cached], frames=[])


def test_text_only_prompts_bypass_lora_unless_configured(tiny_config, tone):
    tiny_config.lora = LoraConfig(enabled=True, r=2, alpha=4)
    model = build_speech_llm(tiny_config).eval()
    text = [[{"role": "user", "content": "plain text question"}]]
    plain = generate(model, text, GenerationConfig(max_new_tokens=8))
    with torch.no_grad():
        for n, p in model.llm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 1.0)
    assert generate(model, text, GenerationConfig(max_new_tokens=8)) == plain
    model.config.lora_on_text = True
    assert generate(model, text, GenerationConfig(max_new_tokens=8)) != plain


def test_adaptor_selection_keeps_non_blank_positions(tiny_config, tone):
    tiny_config.adaptor.select = "blank_removal"
    model = build_speech_llm(tiny_config).eval()
    assert model.adaptor.blank is not None and model.adaptor.blank_bias is not None
    audio = tone(1.3)  # 17 positions before selection
    with torch.no_grad():
        model.adaptor.blank_bias.fill_(1e4)  # every position is blank: one (the least blank) is kept
        _, lengths = model.speech_embeddings([audio])
        assert lengths.tolist() == [1]
        model.adaptor.blank_bias.fill_(-1e4)  # nothing is blank: blank_removal keeps all 17
        kept, lengths = model.speech_embeddings([audio])
        assert lengths.tolist() == [17]
        model.adaptor.config.select = "frame_average"  # runs of one label become their mean
        merged, merged_lengths = model.speech_embeddings([audio])
        labels = model.adaptor.ctc_logits(kept, model.embedding_table())[0].argmax(-1)
        runs = 1 + int((labels[1:] != labels[:-1]).sum())
        assert merged_lengths.tolist() == [runs]
        first_run = 1
        while first_run < len(labels) and labels[first_run] == labels[0]:
            first_run += 1
        torch.testing.assert_close(merged[0, 0], kept[0, :first_run].mean(0), atol=1e-5, rtol=1e-5)
        batch = model.prepare([speech_msg(audio)])
    assert int((batch.input_ids == model.processor.speech_token_id).sum()) == runs


def test_adaptor_without_selection_has_no_blank_row(tiny_model):
    assert tiny_model.adaptor.blank is None
    with pytest.raises(ValueError, match="no blank row"):
        tiny_model.adaptor.ctc_logits(torch.zeros(1, 2, 64), tiny_model.embedding_table())


def test_parts_the_config_never_runs_are_neither_loaded_nor_saved(tiny_config, tmp_path):
    from speechllm.model.checkpoint import load_weights

    torch.manual_seed(0)
    out = save_pretrained(build_speech_llm(tiny_config).eval(), tmp_path / "ckpt")
    tiny_config.adaptor.hidden_dim *= 2  # the saved adaptor no longer fits
    other = build_speech_llm(tiny_config).eval()
    with pytest.raises(WeightsError, match=r"adaptor\..* has shape"):
        load_weights(other, out / "model.safetensors")
    before = {n: p.clone() for n, p in other.named_parameters() if n.startswith("adaptor.")}
    other.unused_parts = lambda: {"adaptor"}  # type: ignore[method-assign]  # as under a whisper bridge
    loaded = load_weights(other, out / "model.safetensors")
    saved = load_file(str(out / "model.safetensors"))
    params = dict(other.named_parameters())
    assert not any(n.startswith("adaptor.") for n in loaded) and any(n.startswith("adaptor.") for n in saved)
    for n in before:  # kept as built
        torch.testing.assert_close(params[n], before[n])
    for n in loaded:  # the rest came from the file
        torch.testing.assert_close(params[n], saved[n].to(params[n].dtype))
    again = load_file(str(save_pretrained(other, tmp_path / "again") / "model.safetensors"))
    assert set(again) == set(loaded)  # and the unused part is not saved


def test_load_model_applies_config_overrides(tiny_model, tmp_path):
    from speechllm.defaults import load_model

    out = save_pretrained(tiny_model, tmp_path / "ckpt")
    assert load_model(out, ["bridge.beam_size=3", "system_prompt=Be brief."]).config.bridge.beam_size == 3
    with pytest.raises(ValueError, match="beam_size"):
        load_model(out, ["bridge.beam_size=0"])


def test_the_cache_goes_by_the_keyword_the_llms_transformers_takes(tiny_model):
    """transformers 5.x takes the cache as `cache` (removing `past_key_values` in 5.40); earlier releases
    took `past_key_values`. A LoRA-wrapped LLM is asked through its base model."""
    import inspect

    from peft import LoraConfig as PeftLora
    from peft import get_peft_model

    from speechllm.weights.llm import cache_kwargs

    llm = tiny_model.llm
    keyword = "cache" if "cache" in inspect.signature(type(llm).forward).parameters else "past_key_values"
    assert cache_kwargs(llm, "the cache") == {keyword: "the cache"}
    wrapped = get_peft_model(llm, PeftLora(r=2, target_modules=["q_proj"]))
    assert cache_kwargs(wrapped, "the cache") == {keyword: "the cache"}

    class Older(torch.nn.Module):
        def forward(self, input_ids=None, past_key_values=None, use_cache=None):
            return past_key_values

    assert cache_kwargs(Older(), 7) == {"past_key_values": 7}
