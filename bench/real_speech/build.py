"""Build a real-speech dev set from the Asterisk prompts that Debian ships, for `slimasr corpus import`.

The prompts of ``asterisk-core-sounds-en`` are read by one professional voice (Allison); the
``-g722`` package holds them as wideband G.722 (16 kHz), and the text package holds their
transcripts (``core-sounds-en.txt.gz``). This script decodes every prompt that has a transcript
to a 16 kHz 16-bit WAV file, normalizes the transcripts as slimasr's corpora are written
(lower case, numbers as words, ``#`` as "pound", ``*`` as "star", no punctuation), and writes a
NeMo-style manifest::

    OUT/real_speech.jsonl       {"audio_filepath": "audio/digits/1.wav", "duration": ..., "text": ...}
    OUT/audio/**.wav            one file per prompt, named as in the package
    OUT/build.json              counts, minutes, what was left out and why, package versions

Sorted, fixed names and a bit-exact decoder: the same packages give the same files. Then::

    slimasr corpus import jsonl OUT/real_speech.jsonl --out data/real_speech --split test

Usage: ``python bench/real_speech/build.py OUT [--root /] [--overwrite]``; ``--root`` is where
the packages' files are (``/`` when installed, or a folder where their .deb files were
extracted with ``dpkg-deb -x``). Needs the ``G722`` package from PyPI (``pip install G722``).
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

SOUNDS = "usr/share/asterisk/sounds/en_US_f_Allison"  # the G.722 files, under --root
TRANSCRIPTS = "usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"
PACKAGES = ("asterisk-core-sounds-en", "asterisk-core-sounds-en-g722")
SAMPLE_RATE = 16000  # G.722 is wideband: 16 kHz audio
BIT_RATE = 64000  # the Asterisk files: 64 kbit/s, 8 bits per 2 samples

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
         "fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SYMBOLS = {"#": " pound ", "*": " star ", "&": " and ", "%": " percent "}
_NOTES = re.compile(r"\[[^\]]*\]|\([^)]*\)|<[^>]*>")  # [beep], (10 seconds of silence), <beep>
_AMBIGUOUS = re.compile(r"\d{3,}|\d[.,:]\d")  # "1234" (one two three four? twelve thirty four?), "28.8"


# ---------------------------------------------------------------------------------------------
# Transcripts
# ---------------------------------------------------------------------------------------------
def read_transcripts(path: Path) -> dict[str, str]:
    """``{"digits/1": "one", ...}`` from lines ``name: text`` (``;`` starts a comment)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        lines = [line.strip() for line in f]
    entries = {}
    for line in lines:
        name, sep, text = line.partition(":")
        if line and not line.startswith(";") and sep and name.strip():
            entries[name.strip()] = text.strip()
    return entries


def normalize(text: str) -> tuple[str, str | None]:
    """(normalized text, None) or ("", why it is left out).

    Notes in brackets are not speech and are removed; numbers of three or more digits and
    decimals are left out, since how the speaker read them ("500", "1234", "28.8") cannot be told
    from the text; numbers below 100 become words.
    """
    text = _NOTES.sub(" ", text)
    if _AMBIGUOUS.search(text):
        return "", "number read in an unknown way"
    for symbol, word in _SYMBOLS.items():
        text = text.replace(symbol, word)
    text = re.sub(r"\d+", lambda m: f" {number_words(int(m.group()))} ", text)
    text = re.sub(r"[^a-z' ]+", " ", text.lower().replace("-", " "))
    words = [w.strip("'") for w in text.split()]
    text = " ".join(w for w in words if w)
    return (text, None) if text else ("", "no speech in the transcript")


def number_words(n: int) -> str:
    """0-99 as spoken: 7 -> "seven", 42 -> "forty two"."""
    if n < 20:
        return _ONES[n]
    tens, ones = divmod(n, 10)
    return _TENS[tens] + (f" {_ONES[ones]}" if ones else "")


# ---------------------------------------------------------------------------------------------
# Audio
# ---------------------------------------------------------------------------------------------
def decode_g722(path: Path) -> np.ndarray:
    """int16 samples ``(num_samples,)`` at 16 kHz (a fresh decoder per file: it keeps state)."""
    import G722

    decoder = G722.G722(SAMPLE_RATE, BIT_RATE)
    return np.asarray(decoder.decode(path.read_bytes()), dtype=np.int16)


def package_versions(root: Path) -> dict[str, str]:
    """Each package's version, from the first line of its changelog.Debian.gz (also present in
    an extracted .deb), or "unknown"."""
    versions = {}
    for package in PACKAGES:
        changelog = root / "usr/share/doc" / package / "changelog.Debian.gz"
        version = "unknown"
        if changelog.is_file():
            with gzip.open(changelog, "rt", encoding="utf-8", errors="replace") as f:
                match = re.match(r"\S+ \(([^)]+)\)", f.readline())
            version = match.group(1) if match else version
        versions[package] = version
    return versions


# ---------------------------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------------------------
def build(root: Path, out: Path) -> dict:
    """Write OUT/real_speech.jsonl, OUT/audio and OUT/build.json; return build.json's content."""
    sounds, transcripts = root / SOUNDS, root / TRANSCRIPTS
    entries = read_transcripts(transcripts)
    audio_names = {str(p.relative_to(sounds).with_suffix("")) for p in sounds.rglob("*.g722")}
    left_out: dict[str, list[str]] = {"no audio file": sorted(set(entries) - audio_names),
                                      "no transcript": sorted(audio_names - set(entries))}  # fmt: skip
    lines, seconds = [], 0.0
    for name in sorted(set(entries) & audio_names):
        text, why = normalize(entries[name])
        if why:
            left_out.setdefault(why, []).append(name)
            continue
        samples = decode_g722(sounds / f"{name}.g722")
        wav = out / "audio" / f"{name}.wav"
        wav.parent.mkdir(parents=True, exist_ok=True)
        sf.write(wav, samples, SAMPLE_RATE, subtype="PCM_16")
        duration = round(len(samples) / SAMPLE_RATE, 4)
        seconds += duration
        lines.append(json.dumps({"audio_filepath": f"audio/{name}.wav", "duration": duration,
                                 "text": text, "speaker": "allison"}))  # fmt: skip
    (out / "real_speech.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    summary = {"utterances": len(lines), "minutes": round(seconds / 60, 2),
               "words": sum(len(json.loads(line)["text"].split()) for line in lines),
               "left_out": {why: names for why, names in left_out.items() if names},
               "packages": package_versions(root)}  # fmt: skip
    (out / "build.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def input_problem(root: Path) -> str | None:
    """One line saying what is missing to build the set, or None."""
    for needed in (root / SOUNDS, root / TRANSCRIPTS):
        if not needed.exists():
            return f"{needed}: not found (apt-get install {' '.join(PACKAGES)}, or pass --root)"
    try:
        import G722  # noqa: F401
    except ImportError:
        return "the G.722 decoder is not installed (pip install G722)"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="output folder (made; must not exist unless --overwrite)")
    parser.add_argument("--root", type=Path, default=Path("/"),
                        help="where the packages' files are: / when installed, or an extracted .deb tree")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    args = parser.parse_args(argv)
    from slimasr.io import atomic_dir

    problem = input_problem(args.root)
    if problem is None and args.out.exists() and any(args.out.iterdir()) and not args.overwrite:
        problem = f"{args.out}: exists and is not empty (pass --overwrite to replace it)"
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    with atomic_dir(args.out) as tmp:  # nothing half-written: the folder appears when complete
        summary = build(args.root, tmp)
    dropped = ", ".join(f"{len(names)} {why}" for why, names in summary["left_out"].items())
    print(f"{summary['utterances']} utterances, {summary['minutes']} minutes, "
          f"{summary['words']} words in {args.out / 'real_speech.jsonl'} (left out: {dropped or 'none'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
