"""Manifests: round trip, paths relative to the manifest, and malformed lines named by line number."""

import json

import pytest

from speechllm.data.manifest import ManifestAppender, ManifestError, Sample, read_manifest, write_manifest


def make_sample(i: int, root) -> Sample:
    return Sample(
        id=f"s{i}",
        task="asr",
        audio=[str(root / "wav" / f"s{i}.wav")],
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Transcribe."}, {"type": "audio", "audio": 0}]},
        ],
        target=f"sentence {i}",
        units=[1, 2, 3] if i % 2 else None,
        voice="espeak:en-us",
        meta={"rate": 1.1},
    )


def test_round_trip_with_relative_paths(tmp_path):
    samples = [make_sample(i, tmp_path) for i in range(3)]
    path = tmp_path / "m.jsonl"
    write_manifest(path, samples)
    first = json.loads(path.read_text().splitlines()[0])
    assert first["audio"] == ["wav/s0.wav"]  # stored relative to the manifest's folder
    assert read_manifest(path) == samples  # and resolved back to absolute paths
    assert read_manifest(path, resolve_paths=False)[0].audio == ["wav/s0.wav"]
    assert not list(tmp_path.glob("*.tmp"))


def test_paths_outside_the_folder_stay_absolute(tmp_path):
    s = make_sample(0, tmp_path / "elsewhere")
    write_manifest(tmp_path / "sub" / "m.jsonl", [s])
    assert read_manifest(tmp_path / "sub" / "m.jsonl")[0].audio == s.audio


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "Expecting property name"),
        ('["a list"]', "must be a JSON object"),
        ('{"id": "x", "task": "asr", "audio": []}', "missing keys"),
        (
            '{"id": "x", "task": "asr", "audio": [], "messages": [{"role": "user", "content": "hi"}], '
            '"target": "", "speaker": "me"}',
            "unknown keys",
        ),
        (
            '{"id": "x", "task": "asr", "audio": [], "messages": [{"role": "robot", "content": "hi"}], "target": ""}',
            "role",
        ),
        (
            '{"id": "x", "task": "asr", "audio": ["a.wav"], '
            '"messages": [{"role": "user", "content": [{"type": "audio", "audio": 1}]}], "target": ""}',
            "audio index 1 out of range",
        ),
        (
            '{"id": "x", "task": "asr", "audio": ["a.wav", "b.wav"], '
            '"messages": [{"role": "user", "content": [{"type": "audio", "audio": 0}]}], "target": ""}',
            "each must be referenced",
        ),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    write_manifest(path, [make_sample(0, tmp_path)])
    with open(path, "a") as f:
        f.write("\n" + line + "\n")  # a blank line 2 is allowed; the bad one is line 3
    with pytest.raises(ManifestError, match=rf"bad\.jsonl:3: .*{message}"):
        read_manifest(path)


def test_duplicate_ids_are_an_error(tmp_path):
    path = tmp_path / "dup.jsonl"
    write_manifest(path, [make_sample(0, tmp_path), make_sample(0, tmp_path)])
    with pytest.raises(ManifestError, match="'s0' appears more than once"):
        read_manifest(path)


def test_appender_drops_a_half_written_last_line(tmp_path):
    path = tmp_path / "m.jsonl"
    with ManifestAppender(path) as out:
        out.append(make_sample(0, tmp_path))
        out.append(make_sample(1, tmp_path))
    path.write_text(path.read_text() + '{"id": "s2", "task": "as')  # killed mid-line
    with ManifestAppender(path) as out:
        out.append(make_sample(3, tmp_path))
    assert [s.id for s in read_manifest(path)] == ["s0", "s1", "s3"]
