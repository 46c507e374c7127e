"""Written words -> the words to say: what eSpeak NG would read wrongly in an LLM's answer.

eSpeak NG already says numbers, `+`, `=`, `%`, `°`, `÷`, `×` and most abbreviations well. What it
gets wrong in chat answers is markup and ASCII arithmetic: `**Lion**` is read "asterisk asterisk
lion asterisk asterisk", `10 * 60` "ten asterisk sixty", and `12 - 2` "twelve two" (a lone
hyphen is silent). Held-out answers of the default model hold all three (README, Speech output).
The signs it says right standing alone (`+ = × ÷`) are written here as the words it says for them
(the same phonemes), so these words are the words said: the speech judge's reference
(`speech_out.judge`), which Whisper's normaliser would otherwise strip of `1 + 1 = 2`'s signs.

The rule reads one whitespace-separated word and the word before it, never a later one, so a
stream can say a word as soon as it is written, and the same words give the same speech whether
they came at once or token by token.
"""

from __future__ import annotations

import re

EMPHASIS = "*_`"
"""Markdown emphasis and code marks: never said around a word (`**Lion**`, `_x_`, `` `code` ``)."""
HEADING = "#"
"""Markdown heading marks before a word (`### Steps`, `#1`): never said."""
TIMES = {"*", "x", "X"}
"""Said "times" between numbers (`10 * 60`); a lone `*` elsewhere is a bullet, not said."""
MINUS = {"-", "\u2013", "\u2212"}
"""Hyphen, en dash, minus sign: said "minus" after a number (`12 - 2`); elsewhere a dash, not said."""
SAID = {"+": "plus", "=": "equals", "\u00d7": "times", "\u00f7": "divided by"}
"""Signs eSpeak NG reads as these words when they stand alone: written as the words (same phonemes)."""
CLAUSE_END = ".,:;!?"
_NUMBER = re.compile(r"^[(\[]?[-+\u2212]?\d[\d,.]*[)\]]?$")


def is_number(word: str) -> bool:
    """`12`, `3.14`, `1,000`, `(5)`: a word an operator after it makes arithmetic of."""
    return bool(_NUMBER.match(word))


def spoken_word(word: str, previous: str = "") -> str:
    """The text to phonemize for `word` ("" when it is not said); `previous`: the word written before it."""
    if word in TIMES and is_number(previous):
        return "times"
    if word in MINUS:
        return "minus" if is_number(previous) else ""
    core = word.rstrip(CLAUSE_END)
    if core in SAID:
        return SAID[core] + word[len(core) :]
    bare = core.lstrip(HEADING).strip(EMPHASIS)
    if bare == core:
        return word
    return bare + word[len(core) :] if bare else ""


def spoken_words(text: str) -> list[str]:
    """The words of `text` to say, in order (`spoken_word` over its whitespace-separated words)."""
    out, previous = [], ""
    for word in text.split():
        said = spoken_word(word, previous)
        previous = word
        if said:
            out.append(said)
    return out
