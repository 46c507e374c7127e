"""The `tail` encoder: the real length and a silence margin encoded, the window completed by a silent
window's states; its features, its batching, its fallback to the whole window."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from speechllm.config import EncoderConfig
from speechllm.model.encoder import TAIL_MARGIN_FRAMES, TAIL_SILENCE, load_whisper_encoder, split_windows
from speechllm.model.features import LogMel, log_mel_for
from speechllm.model.transcriber import encode_windows, repetitive, transcribe_windows


def _encoders(tiny_whisper_dir):
    tail = load_whisper_encoder(EncoderConfig(source=str(tiny_whisper_dir), padding="tail")).eval()
    whole = load_whisper_encoder(EncoderConfig(source=str(tiny_whisper_dir), padding="30s")).eval()
    return tail, whole


def test_tail_features_carry_a_second_of_silence_past_the_reported_length(tone):
    audio = tone(1.3)
    feats, lengths = log_mel_for(EncoderConfig(padding="tail"))([audio, audio[:8000]])
    assert lengths.tolist() == [130, 50] and feats.shape == (2, 80, 130 + TAIL_MARGIN_FRAMES)
    whole, _ = LogMel(80, pad_to_30s=True)([audio])
    # the margin is audio-domain silence: what Whisper's own 30 s padding gives at those frames
    torch.testing.assert_close(feats[0], whole[0, :, : 130 + TAIL_MARGIN_FRAMES])
    assert log_mel_for(EncoderConfig(padding="real")).margin == 0
    with pytest.raises(ValueError, match="margin must be >= 0"):
        LogMel(80, margin=-1)


def test_a_tail_window_is_its_own_run_then_the_silent_window(tiny_whisper_dir, tone):
    """Each sample's first positions are its speech and margin encoded alone (a batch changes
    nothing), the rest are the silent window's; trimmed outputs stop at the real length."""
    tail, _ = _encoders(tiny_whisper_dir)
    audios = [tone(1.31, seed=1), tone(0.6, seed=2)]
    feats, lengths = log_mel_for(tail.config)(audios)  # 2, 80, 231
    with torch.no_grad():
        window, out_lengths = tail(feats, lengths, trim=False)
        trimmed, trimmed_lengths = tail(feats, lengths)
        silence = tail.silence_states()
    assert window.shape == (2, 1500, 64) and out_lengths.tolist() == [1500, 1500]
    assert trimmed_lengths.tolist() == [66, 30] and trimmed.shape == (2, 66, 64)
    for i, n in enumerate(lengths.tolist()):
        run = n + TAIL_MARGIN_FRAMES + n % 2  # an even run: 131 frames + 100 + 1
        with torch.no_grad():
            alone, _ = tail(feats[i : i + 1, :, :run], torch.tensor([n]), trim=False)
        keep = run // 2
        torch.testing.assert_close(window[i, :keep], alone[0, :keep], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(window[i, keep:], silence[keep:])
        torch.testing.assert_close(trimmed[i, : (n + 1) // 2], window[i, : (n + 1) // 2])
    silent = torch.full((1, 80, 3000), TAIL_SILENCE)
    with torch.no_grad():
        torch.testing.assert_close(silence, _encoders(tiny_whisper_dir)[1](silent, torch.tensor([3000]))[0][0])


def test_whole_windows_of_tail_features_are_whispers_30s_encoding(tiny_whisper_dir, tone):
    tail, whole = _encoders(tiny_whisper_dir)
    audio = tone(2.0, seed=3)
    with torch.no_grad():
        expected, _ = encode_windows(whole, *log_mel_for(whole.config)([audio]))
        windows, window_lengths, _ = split_windows(*log_mel_for(tail.config)([audio]))
        got = tail.whole_windows(windows, window_lengths)
        already = whole.whole_windows(*split_windows(*log_mel_for(whole.config)([audio]))[:2])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(already, expected, atol=1e-5, rtol=1e-5)  # a 30s encoder's windows as they are


def test_the_silent_window_is_kept_in_eval_and_recomputed_after_training(tiny_whisper_dir):
    tail, _ = _encoders(tiny_whisper_dir)
    first = tail.silence_states()
    assert tail.silence_states() is first  # computed once
    tail.train()
    with torch.no_grad():
        tail.layer_norm.bias += 1.0  # a training step
    tail.eval()
    again = tail.silence_states()
    torch.testing.assert_close(again, first + 1.0, atol=1e-5, rtol=1e-5)


def test_repetitive_is_whispers_compression_test():
    assert repetitive("Word. " * 20)
    assert not repetitive("Montreal forced aligner. Word, another word, here's some more.")
    assert not repetitive("")


class _Decoder:
    """Stands in for Whisper's decoder: loops on the shortened window, not on the whole one."""

    def __init__(self, silence):
        self.silence, self.seen = silence, []

    def know_window(self, window):
        assert window is self.silence

    def transcribe(self, states, max_tokens=128, beam_size=1, choose=None, confidence=None):
        self.seen.append(states)
        looping = torch.equal(states[0, -1], self.silence[-1])
        return ["so so so so so so so so so so so so so so so so so so" if looping else "so"]


def test_a_looping_tail_transcript_is_decoded_again_over_the_whole_window(tiny_whisper_dir, tone):
    tail, whole = _encoders(tiny_whisper_dir)
    audio = tone(1.0)
    decoder = _Decoder(tail.silence_states())
    with torch.no_grad():
        texts = transcribe_windows(tail, decoder, *log_mel_for(tail.config)([audio]))  # type: ignore[arg-type]
        expected, _ = encode_windows(whole, *log_mel_for(whole.config)([audio]))
    assert texts == [["so"]] and len(decoder.seen) == 2
    torch.testing.assert_close(decoder.seen[1], expected, atol=1e-5, rtol=1e-5)
    decoder = _Decoder(tail.silence_states())
    with torch.no_grad():
        transcribe_windows(whole, decoder, *log_mel_for(whole.config)([audio]))  # type: ignore[arg-type]
    assert len(decoder.seen) == 1  # the 30 s window is never decoded twice


def test_the_whisper_recognizer_reads_a_whole_or_a_tail_window(tiny_config):
    bridge = dataclasses.replace(tiny_config.bridge, mode="top1", recognizer="whisper")
    for padding in ("30s", "tail"):
        dataclasses.replace(
            tiny_config, bridge=bridge, encoder=dataclasses.replace(tiny_config.encoder, padding=padding)
        )
    real = dataclasses.replace(tiny_config.encoder, padding="real")
    with pytest.raises(ValueError, match=r"set encoder.padding to '30s' or 'tail'"):
        dataclasses.replace(tiny_config, bridge=bridge, encoder=real)
    with pytest.raises(ValueError, match=r"padding must be '30s' or 'tail'"):
        encode_windows(load_whisper_encoder(real), torch.zeros(1, 80, 10), torch.tensor([10]))


def test_the_decoder_projects_only_what_differs_from_the_known_window(tiny_whisper_dir, tone):
    from speechllm.model.whisper_decoder import DecoderArch, WhisperTextDecoder

    tail, _ = _encoders(tiny_whisper_dir)
    torch.manual_seed(0)
    arch = DecoderArch(vocab_size=40, d_model=64, n_layers=2, n_heads=4, ffn_dim=128, max_positions=16,
                       prompt=[30, 31], eot=32, suppress_begin=[32], specials_from=33)  # fmt: skip
    decoder = WhisperTextDecoder(arch).eval()
    with torch.no_grad():
        states, _ = encode_windows(tail, *log_mel_for(tail.config)([tone(1.3), tone(0.5, seed=4)]))
        plain = decoder._cross_cache(states)
        decoder.know_window(tail.silence_states())
        rows: list[int] = []
        hook = decoder.layers[0].encoder_attn.k_proj.register_forward_hook(lambda m, a, o: rows.append(a[0].shape[1]))
        reused = decoder._cross_cache(states)
        hook.remove()
        nbest_plain = decoder.nbest(states[:1], beam_size=3, max_tokens=5)
        decoder._known = None
        nbest_known = decoder.nbest(states[:1], beam_size=3, max_tokens=5)
    assert rows == [(130 + TAIL_MARGIN_FRAMES) // 2]  # the longer sample's run; the rest is the silent window
    for a, b in zip(plain, reused):
        for name in ("xk", "xv"):
            torch.testing.assert_close(b[name], a[name], atol=1e-5, rtol=1e-5)
    assert [ids for ids, _ in nbest_plain] == [ids for ids, _ in nbest_known]
