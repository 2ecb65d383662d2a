"""What a synthetic clip is: its sound events, the captions that describe them, and which captions
truly describe which clips.

A clip holds one or two events (a source with attributes: pitch, speed, loudness, position); each
caption is a list of checkable claims about them, so a caption truly describes every clip whose
events satisfy all its claims (``truth_matrix``). ``synth`` writes clips and captions in the ClothoV2 layout.
"""

from __future__ import annotations

import json

import numpy as np
import scipy.sparse as sp
from scipy import signal

from salsa_lib.data.splits import CAPTIONS_PER_CLIP
from salsa_lib.data.synth_sounds import SYNTHESIZERS

ATTRIBUTE_ORDER = ("pitch", "speed", "loudness", "position")
VALUES = {"pitch": "low;high", "speed": "slow;fast", "loudness": "loud;quiet", "position": "beginning;end;throughout"}
# position -> (onset range, offset range) as fractions of the clip: "beginning" ends before "end" starts
SPANS = {"beginning": ((0, 0.05), (0.4, 0.5)), "end": ((0.5, 0.6), (0.95, 1.0)), "throughout": ((0, 0.03), (0.97, 1))}
# Chosen so that the median caption truly describes a handful of clips: single-event captions name
# more attributes than two-event ones (whose second source is already rare).
P_PAIR, P_ATTR_SINGLE, P_ATTR_PAIR, P_RELATION = 0.5, 0.6, 0.25, 0.5


SOURCES = {
    "beep": ("pitch speed", "a|alarm;a|beeper;a|electronic device;a|timer", "beeps/beep/beeping", True),
    "siren": ("pitch speed", "a|siren;a|emergency siren;a|police siren",
              "wails/wail/wailing;blares/blare/blaring;sounds/sound/sounding", False),
    "bird": ("pitch speed", "a|bird;a|songbird;pl|birds", "chirps/chirp/chirping;tweets/tweet/tweeting", True),
    "hum": ("pitch", "a|machine;a|transformer;a|refrigerator", "hums/hum/humming;drones/drone/droning", False),
    "engine": ("pitch speed", "a|engine;a|car engine;a|motor",
               "runs/run/running;rumbles/rumble/rumbling;sputters/sputter/sputtering", False),
    "bell": ("pitch", "a|bell;a|church bell;a|hand bell", "rings/ring/ringing;chimes/chime/chiming", False),
    "whistle": ("pitch", "a|kettle;a|tea kettle;a|train whistle", "whistles/whistle/whistling;sounds/sound/sounding",
                False),
    "rain": ("", "-|rain;-|rainfall;pl|raindrops", "falls/fall/falling;patters/patter/pattering", False),
    "wind": ("speed", "the|wind;-|wind;a|breeze", "blows/blow/blowing;gusts/gust/gusting;howls/howl/howling", False),
    "hiss": ("", "-|steam;a|gas leak;a|pipe;a|pressure valve", "hisses/hiss/hissing", False),
    "ticking": ("speed", "a|clock;a|wall clock;a|metronome", "ticks/tick/ticking", True),
    "knocking": ("speed", "pl|knocks;pl|knocks on a door;pl|thumps on a door",
                 "sound/sound/sounding;echo/echo/echoing;repeat/repeat/repeating", True),
    "footsteps": ("speed", "pl|footsteps;pl|steps;pl|footfalls", "sound/sound/sounding;echo/echo/echoing", True),
}
# (attribute, value) -> (adjectives before the noun, phrases after the verb)
WORDS = {
    ("pitch", "low"): ("low;deep;low-pitched", ""), ("pitch", "high"): ("high;high-pitched;shrill", ""),
    ("loudness", "loud"): ("loud", "loudly"),
    ("loudness", "quiet"): ("faint;quiet;soft", "in the background;in the distance;faintly;softly"),
    ("speed", "fast"): ("", "rapidly;quickly;at a fast pace"), ("speed", "slow"): ("", "slowly;at a slow pace"),
    ("position", "beginning"): ("", "at first;at the start;at the beginning;early on;before fading out"),
    ("position", "end"): ("", "at the end;towards the end;near the end;later on"),
    ("position", "throughout"): ("", "throughout;the whole time;continuously;all the way through"),
}
RHYTHM_WORDS = {"fast": ";in quick succession;at a fast rhythm", "slow": ";with long pauses;at a slow rhythm"}
TEMPLATES = {  # {C}: a clause ("a siren wails"), {N}: a noun phrase ("a siren wailing")
    "one": ["{C0}.", "You can hear {N0}.", "{N0} can be heard.", "The sound of {N0}.", "In this recording {C0}."],
    "and": ["{C0} and {C1}.", "You can hear {N0} and {N1}.", "{N0} and {N1} can be heard.",
            "The sound of {N0} and {N1}."],
    "while": ["{C0} while {C1}.", "While {C1}, {C0}.", "{N0} can be heard while {C1}."],
    "before": ["{C0}, then {C1}.", "{C0} and then {C1}.", "{C0}, followed by {N1}.", "First {C0}, then {C1}."],
}


def _attributes(source):
    return [*SOURCES[source][0].split(), "loudness", "position"]


def attributes_of(source: str) -> list[str]:
    """The attributes a source's events carry (its own, then loudness and position)."""
    return _attributes(source)


def _relation_holds(kind, on_a, off_a, on_b, off_b):
    """'before': a ends before b starts; 'while': they overlap. Works on scalars and arrays alike."""
    if kind == "before":
        return off_a <= on_b
    return np.maximum(on_a, on_b) < np.minimum(off_a, off_b)


def _choose(rng, options: str) -> str:
    parts = options.split(";")
    return parts[int(rng.integers(len(parts)))]


def sample_events(rng, n):
    """1-3 distinct sources; the first is loud so that 'quiet' always means quieter than something."""
    events = []
    for k, source in enumerate(rng.choice(sorted(SOURCES), int(rng.integers(1, 4)), replace=False)):
        attrs = {key: _choose(rng, VALUES[key]) for key in _attributes(str(source))}
        attrs["loudness"] = "loud" if k == 0 else attrs["loudness"]
        (a, b), (c, d) = SPANS[attrs["position"]]
        onset = int(rng.uniform(a, b) * n)
        events.append({"source": str(source), "attributes": attrs, "onset_sample": onset,
                       "offset_sample": max(int(rng.uniform(c, d) * n), onset + 1),
                       "gain_db": round(float(rng.uniform(-3, 0) if attrs["loudness"] == "loud"
                                              else rng.uniform(-20, -14)), 2)})
    return events


def _phrase(rng, source, attrs, form):
    """Word one claim; form C is a clause ('a siren wails'), N a noun phrase ('a siren wailing')."""
    det, noun = _choose(rng, SOURCES[source][1]).split("|")
    third, base, gerund = _choose(rng, SOURCES[source][2]).split("/")
    pre, post = [], []
    for key in ("loudness", "pitch", "speed", "position"):  # "a loud deep siren wails slowly at first"
        if key in attrs:
            adjectives, phrases = WORDS[key, attrs[key]]
            if key == "speed" and SOURCES[source][3]:
                phrases += RHYTHM_WORDS[attrs[key]]
            use_adjective = adjectives and (not phrases or rng.random() < 0.6)
            (pre if use_adjective else post).append(_choose(rng, adjectives if use_adjective else phrases))
    verb = gerund if form == "N" else base if det == "pl" else third
    words = ([] if det in ("-", "pl") else [det]) + pre + [noun, verb] + post
    if words[0] == "a" and words[1][0] in "aeiou":
        words[0] = "an"
    return " ".join(words)


def _span(event):
    return event["onset_sample"], event["offset_sample"]


def _caption(rng, events):
    """Claims about 1-2 of the clip's events (a random subset of their attributes), then words for them."""
    picked = [events[int(i)] for i in rng.choice(len(events), 2 if len(events) > 1 and rng.random() < P_PAIR else 1,
                                                 replace=False)]
    if len(picked) == 2 and _relation_holds("before", *_span(picked[1]), *_span(picked[0])):
        picked.reverse()
    p = P_ATTR_SINGLE if len(picked) == 1 else P_ATTR_PAIR
    claims = [{"source": e["source"], "attributes": {k: v for k, v in e["attributes"].items() if rng.random() < p}}
              for e in picked]
    kind = "one" if len(picked) == 1 else "and"
    if len(picked) == 2 and rng.random() < P_RELATION:
        kind = next((r for r in ("before", "while") if _relation_holds(r, *_span(picked[0]), *_span(picked[1]))), kind)
    words = {f"{form}{j}": _phrase(rng, c["source"], c["attributes"], form)
             for j, c in enumerate(claims) for form in "CN"}
    text = TEMPLATES[kind][int(rng.integers(len(TEMPLATES[kind])))].format(**words)
    relations = [{"type": kind, "first": 0, "second": 1}] if kind in ("before", "while") else []
    return {"text": text[0].upper() + text[1:], "claims": claims, "relations": relations}


def captions_for(rng, events):
    """Five different Clotho-like captions (4-20 words) of one clip."""
    captions = []
    for _ in range(1000):
        caption = _caption(rng, events)
        if 4 <= len(caption["text"].split()) <= 20 and caption["text"] not in {c["text"] for c in captions}:
            captions.append(caption)
            if len(captions) == CAPTIONS_PER_CLIP:
                return captions
    raise RuntimeError(f"could not word {CAPTIONS_PER_CLIP} different captions for {events}")


def render(rng, clip, n, sr):
    """Mix the events over a noise bed at the clip's SNR; peak-normalise to the clip's peak (< 1)."""
    mix = np.zeros(n)
    for event in clip["events"]:
        (on, off), length = _span(event), event["offset_sample"] - event["onset_sample"]
        x = SYNTHESIZERS[event["source"]](rng, np.arange(length) / sr, sr, event["attributes"])
        x = x / max(np.sqrt(np.mean(x**2)), np.max(np.abs(x)) / 4, 1e-12)  # cap the crest of clicky sources
        fade = np.ones(length)
        ramp = np.sin(np.linspace(0, np.pi / 2, min(int(0.02 * sr), length // 4))) ** 2
        fade[: len(ramp)], fade[length - len(ramp):] = ramp, ramp[::-1]
        mix[on:off] += x * fade * 10 ** (event["gain_db"] / 20)
    noise = rng.standard_normal(n) + signal.lfilter([1], [1, -0.98], rng.standard_normal(n)) / 5
    mix += noise / np.sqrt(np.mean(noise**2)) * 10 ** (-clip["snr_db"] / 20)
    return mix * clip["peak"] / np.max(np.abs(mix))


def truth_matrix(clips):
    """truth[i, 5c + k]: every claim (and relation) of caption k of clip c holds for clip i."""
    events = [e for c in clips for e in c["events"]]
    owner = np.repeat(np.arange(len(clips)), [len(c["events"]) for c in clips])
    fields = {k: np.array([e["attributes"].get(k, "") for e in events]) for k in ATTRIBUTE_ORDER}
    fields["source"] = np.array([e["source"] for e in events])
    on, off = (np.array([_span(e)[k] for e in events]) for k in (0, 1))
    a, b = np.nonzero((owner[:, None] == owner) & ~np.eye(len(events), dtype=bool))  # event pairs within a clip
    holds = {r: _relation_holds(r, on[a], off[a], on[b], off[b]) for r in ("before", "while")}
    cache = {}  # captions share claims: each distinct claim or relation is evaluated once

    def matching(claim):
        return np.logical_and.reduce([fields["source"] == claim["source"],
                                      *(fields[k] == v for k, v in claim["attributes"].items())])

    def clips_where(what, owners, mask):
        key = json.dumps(what, sort_keys=True)
        if key not in cache:
            cache[key] = np.bincount(owners[mask()], minlength=len(clips)) > 0
        return cache[key]

    truth = np.ones((CAPTIONS_PER_CLIP * len(clips), len(clips)), dtype=bool)  # transposed while filled
    for row, caption in zip(truth, (cap for c in clips for cap in c["captions"])):
        for claim in caption["claims"]:
            row &= clips_where(claim, owner, lambda: matching(claim))
        for rel in caption["relations"]:
            x, y = caption["claims"][rel["first"]], caption["claims"][rel["second"]]
            row &= clips_where([rel["type"], x, y], owner[a],
                               lambda: matching(x)[a] & matching(y)[b] & holds[rel["type"]])
    truth = truth.T
    if not all(truth[i, CAPTIONS_PER_CLIP * i:CAPTIONS_PER_CLIP * (i + 1)].all() for i in range(len(clips))):
        raise AssertionError("a clip's own caption does not describe it: the caption generator is broken")
    return sp.csr_matrix(truth)
