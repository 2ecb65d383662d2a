"""A synthetic audio-caption benchmark laid out exactly like ClothoV2, with a known truth matrix.

Why it exists: the default profile must run the whole pipeline on a 2-core CPU in minutes, and SALSA's
premise is that a caption often describes more clips than its own. Here every caption is a list of
checkable claims about synthesized sound events, so which captions truly describe which clips is known
exactly (``synthetic_truth_<split>.npz``) and can be audited from ``synthetic_events_<split>.json``.
"""

from __future__ import annotations

import io
import json
import math
import operator
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import soundfile as sf
from scipy import signal
from tqdm.auto import tqdm

from salsa_lib.errors import ConfigError, DataError
from salsa_lib.files import atomic_path, atomic_write_csv, atomic_write_json
from salsa_lib.splits import SPLIT_FOLDERS

SPLITS = tuple(SPLIT_FOLDERS.values())
FORMAT_VERSION = 1
DEFAULT_N_CLIPS = {"development": 300, "validation": 100, "evaluation": 100}
N_CAPTIONS = 5
ATTRIBUTE_ORDER = ("pitch", "speed", "loudness", "position")
VALUES = {"pitch": "low;high", "speed": "slow;fast", "loudness": "loud;quiet", "position": "beginning;end;throughout"}
# position -> (onset range, offset range) as fractions of the clip: "beginning" ends before "end" starts
SPANS = {"beginning": ((0, 0.05), (0.4, 0.5)), "end": ((0.5, 0.6), (0.95, 1.0)), "throughout": ((0, 0.03), (0.97, 1))}
# Chosen so that the median caption truly describes a handful of clips: single-event captions name
# more attributes than two-event ones (whose second source is already rare).
P_PAIR, P_ATTR_SINGLE, P_ATTR_PAIR, P_RELATION = 0.5, 0.6, 0.25, 0.5


def _pick(rng, attrs, key, low, high):
    """Draw a parameter from the range the event's attribute names, so its caption words stay true."""
    lo, hi = low if attrs.get(key) in ("low", "slow") else high
    return rng.uniform(lo, hi)


def _decay(rng, sr, seconds, tau, freq=None):
    """A short decaying burst (noise, or a sine at ``freq``): the atom of every percussive source."""
    t = np.arange(max(int(seconds * sr), 1)) / sr
    core = np.sin(2 * np.pi * freq * t) if freq else rng.standard_normal(len(t))
    return core * np.exp(-t / tau)


def _pulses(rng, n, sr, period, kernel, jitter=0.0):
    """Repeat ``kernel`` every ``period`` seconds from near the start, so even short events sound."""
    out = np.zeros(n + len(kernel))
    for start in np.arange(rng.uniform(0, 0.1) * period, n / sr, period):
        i = min(int(max(start + rng.normal(0, jitter * period), 0.0) * sr), n - 1) if jitter else int(start * sr)
        out[i:i + len(kernel)] += kernel
    return out[:n]


def _filtered(rng, n, sr, kind, hz):
    return signal.sosfilt(signal.butter(4, min(hz, 0.45 * sr), kind, fs=sr, output="sos"),
                          rng.standard_normal(n))


def _beep(rng, t, sr, a):
    f, period = _pick(rng, a, "pitch", (300, 600), (1500, 3000)), 1 / _pick(rng, a, "speed", (1, 2), (5, 8))
    k = np.sin(2 * np.pi * f * np.arange(int(0.45 * period * sr)) / sr)
    return _pulses(rng, len(t), sr, period, k * np.hanning(len(k)) ** 0.2)


def _siren(rng, t, sr, a):
    fc, rate = _pick(rng, a, "pitch", (450, 700), (1000, 1500)), _pick(rng, a, "speed", (0.2, 0.5), (2, 4))
    phase = 2 * np.pi * np.cumsum(fc * (1 + 0.3 * np.sin(2 * np.pi * rate * t + rng.uniform(0, 6.3)))) / sr
    return np.sin(phase) + 0.3 * np.sin(2 * phase)


def _chirp(rng, t, sr, a):
    f0, period = _pick(rng, a, "pitch", (1500, 2500), (3000, 4500)), 1 / _pick(rng, a, "speed", (1.5, 3), (7, 10))
    n = int(rng.uniform(0.04, 0.08) * sr)
    k = np.sin(2 * np.pi * np.cumsum(f0 * (1 + 0.6 * np.linspace(0, 1, n) ** 2)) / sr) * np.hanning(n)
    return _pulses(rng, len(t), sr, period, k, jitter=0.15)


def _harmonics(f0, t, count, rng):
    return sum(np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 6.3)) / k for k in range(1, count + 1))


def _hum(rng, t, sr, a):
    return _harmonics(_pick(rng, a, "pitch", (50, 80), (150, 250)), t, 6, rng)


def _engine(rng, t, sr, a):
    f0, rate = _pick(rng, a, "pitch", (30, 50), (90, 140)), _pick(rng, a, "speed", (1, 3), (8, 15))
    return _harmonics(f0, t, 12, rng) * (1 + 0.7 * np.sin(2 * np.pi * rate * t)) + 0.2 * _filtered(
        rng, len(t), sr, "lowpass", 300)


def _bell(rng, t, sr, a):
    f0, m = _pick(rng, a, "pitch", (200, 400), (800, 1400)), t[: int(2 * sr)]
    k = sum(np.sin(2 * np.pi * r * f0 * m) * np.exp(-m * (1.5 + r)) / r for r in (1, 2.32, 2.76, 4.07, 5.2))
    k *= np.linspace(1, 0, len(m)) ** 0.5  # no click where the 2 s kernel ends
    return _pulses(rng, len(t), sr, max(t[-1] / rng.integers(1, 4), 0.6), k)


def _whistle(rng, t, sr, a):
    f = _pick(rng, a, "pitch", (700, 1000), (2000, 3000)) * (1 + 0.02 * np.sin(2 * np.pi * 5.5 * t))
    return np.sin(2 * np.pi * np.cumsum(f) / sr)


def _rain(rng, t, sr, a):
    drops, count = np.zeros(len(t)), rng.poisson(150 * len(t) / sr) + 1
    np.add.at(drops, rng.integers(0, len(t), count), rng.uniform(0.3, 1.0, count))
    return signal.fftconvolve(drops, _decay(rng, sr, 0.004, 0.001, 3000))[: len(t)] * 4 + 0.3 * _filtered(
        rng, len(t), sr, "highpass", 1000)


def _wind(rng, t, sr, a):
    rate = _pick(rng, a, "speed", (0.15, 0.4), (1.5, 3))
    return _filtered(rng, len(t), sr, "lowpass", 400) * (1 + 0.8 * np.sin(2 * np.pi * rate * t + rng.uniform(0, 6.3)))


def _hiss(rng, t, sr, a):
    return _filtered(rng, len(t), sr, "highpass", 4000)


def _ticking(rng, t, sr, a):
    return _pulses(rng, len(t), sr, _pick(rng, a, "speed", (0.8, 1.2), (0.2, 0.3)), _decay(rng, sr, 0.01, 0.001, 2500))


def _knocking(rng, t, sr, a):
    gap, knock = rng.uniform(0.12, 0.18), _decay(rng, sr, 0.05, 0.01, rng.uniform(120, 180))
    group = _pulses(rng, int(gap * rng.integers(2, 4) * sr), sr, gap, knock)
    return _pulses(rng, len(t), sr, _pick(rng, a, "speed", (1.5, 2.2), (0.5, 0.8)), group)


def _footsteps(rng, t, sr, a):
    thud = signal.sosfilt(signal.butter(2, 300, "lowpass", fs=sr, output="sos"), _decay(rng, sr, 0.08, 0.02))
    return _pulses(rng, len(t), sr, _pick(rng, a, "speed", (0.7, 0.9), (0.3, 0.4)), thud, jitter=0.05)


# name -> synthesizer(rng, t, sample_rate, attributes) -> samples; looked up at call time (tests patch it).
SYNTHESIZERS = {"beep": _beep, "siren": _siren, "bird": _chirp, "hum": _hum, "engine": _engine, "bell": _bell,
                "whistle": _whistle, "rain": _rain, "wind": _wind, "hiss": _hiss, "ticking": _ticking,
                "knocking": _knocking, "footsteps": _footsteps}
# name -> (attributes besides loudness/position, nouns "det|noun" (det a, the, - or pl), verbs "3sg/base/-ing",
# rhythmic?). Loudness and position apply to every source.
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


def _sample_events(rng, n):
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


def _captions(rng, events):
    """Five different Clotho-like captions (4-20 words) of one clip."""
    captions = []
    for _ in range(1000):
        caption = _caption(rng, events)
        if 4 <= len(caption["text"].split()) <= 20 and caption["text"] not in {c["text"] for c in captions}:
            captions.append(caption)
            if len(captions) == N_CAPTIONS:
                return captions
    raise RuntimeError(f"could not word {N_CAPTIONS} different captions for {events}")


def _render(rng, clip, n, sr):
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


def _truth(clips):
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

    truth = np.ones((N_CAPTIONS * len(clips), len(clips)), dtype=bool)  # transposed while filled
    for row, caption in zip(truth, (cap for c in clips for cap in c["captions"])):
        for claim in caption["claims"]:
            row &= clips_where(claim, owner, lambda: matching(claim))
        for rel in caption["relations"]:
            x, y = caption["claims"][rel["first"]], caption["claims"][rel["second"]]
            row &= clips_where([rel["type"], x, y], owner[a],
                               lambda: matching(x)[a] & matching(y)[b] & holds[rel["type"]])
    truth = truth.T
    if not all(truth[i, N_CAPTIONS * i:N_CAPTIONS * (i + 1)].all() for i in range(len(clips))):
        raise AssertionError("a clip's own caption does not describe it: the caption generator is broken")
    return sp.csr_matrix(truth)


def _save_npz(path, matrix):
    """scipy.sparse.save_npz's layout, but with fixed zip timestamps so equal seeds give equal bytes."""
    arrays = {"indices": matrix.indices, "indptr": matrix.indptr, "format": np.array(b"csr"),
              "shape": np.array(matrix.shape), "data": matrix.data}
    with atomic_path(path, ".npz") as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asarray(array), allow_pickle=False)
            archive.writestr(zipfile.ZipInfo(f"{name}.npy", (1980, 1, 1, 0, 0, 0)), buffer.getvalue(),
                             compress_type=zipfile.ZIP_DEFLATED)


def _write_split(folder, index, params, bar):
    """One split: WAVs, both CSVs, truth matrix and the audit JSON, from the split's own seed."""
    split, sr = SPLITS[index], params["sample_rate"]
    n, count = round(params["clip_seconds"] * sr), params["n_clips"][SPLITS[index]]
    meta_seed, audio_seed = np.random.SeedSequence(params["seed"]).spawn(len(SPLITS))[index].spawn(2)
    meta_rng, clips = np.random.default_rng(meta_seed), []
    (folder / split).mkdir()
    for i, clip_seed in enumerate(audio_seed.spawn(count)):
        events = _sample_events(meta_rng, n)
        clip = {"file_name": f"synthetic_{split}_{i:04d}.wav", "snr_db": round(float(meta_rng.uniform(20, 35)), 2),
                "peak": round(float(meta_rng.uniform(0.6, 0.9)), 3), "events": events,
                "captions": _captions(meta_rng, events)}
        audio = _render(np.random.default_rng(clip_seed), clip, n, sr)
        sf.write(folder / split / clip["file_name"], np.round(audio * 32767).astype(np.int16), sr, subtype="PCM_16")
        clips.append(clip)
        bar.update()
    names = [c["file_name"] for c in clips]
    texts = {f"caption_{k + 1}": [c["captions"][k]["text"] for c in clips] for k in range(N_CAPTIONS)}
    atomic_write_csv(folder / f"clotho_captions_{split}.csv", pd.DataFrame({"file_name": names, **texts}))
    ids = [(index + 1) * 1_000_000 + i for i in range(count)]
    atomic_write_csv(folder / f"clotho_metadata_{split}.csv", pd.DataFrame({
        "file_name": names, "keywords": [";".join(e["source"] for e in c["events"]) for c in clips],
        "sound_id": ids, "sound_link": [f"https://example.org/salsa-synthetic/{i}" for i in ids],
        "start_end_samples": f"[0, {n}]", "manufacturer": "salsa_lib.synth", "license": "CC0 (synthetic)"}))
    _save_npz(folder / f"synthetic_truth_{split}.npz", _truth(clips))
    atomic_write_json(folder / f"synthetic_events_{split}.json", {
        "format_version": FORMAT_VERSION, "split": split, "sample_rate": sr, "clip_seconds": params["clip_seconds"],
        "sources": {name: _attributes(name) for name in SOURCES}, "clips": clips})


def _integer(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return operator.index(value)


def _parameters(n_clips, clip_seconds, sample_rate, seed):
    """Validated parameters as they are stamped in synthetic.json (and compared for reuse)."""
    if n_clips is not None and not isinstance(n_clips, Mapping):
        raise ConfigError(f"n_clips must map split names {SPLITS} to clip counts, got {n_clips!r}")
    unknown = sorted(map(repr, set(n_clips or {}) - set(SPLITS)))
    if unknown:
        raise ConfigError(f"n_clips names unknown split(s) {', '.join(unknown)}; expected some of {SPLITS}")
    counts = {**DEFAULT_N_CLIPS, **(n_clips or {})}
    counts = {s: _integer(f"n_clips[{s!r}]", counts[s], 1) for s in SPLITS}
    if isinstance(clip_seconds, bool) or not isinstance(clip_seconds, (int, float)) or not (
            math.isfinite(clip_seconds) and clip_seconds >= 0.1):
        raise ConfigError(f"clip_seconds must be a number >= 0.1 (room for sound events), got {clip_seconds!r}")
    return {"format_version": FORMAT_VERSION, "n_clips": counts, "clip_seconds": float(clip_seconds),
            "sample_rate": _integer("sample_rate", sample_rate, 16000), "seed": _integer("seed", seed, 0)}


def _is_complete(root, params):
    """Reuse only a set stamped with exactly these parameters (the stamp is written last)."""
    try:
        stamp = json.loads((root / "synthetic.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return stamp == params and all((root / f"{kind}_{s}.{ext}").is_file() for s in SPLITS for kind, ext in (
        ("clotho_captions", "csv"), ("clotho_metadata", "csv"), ("synthetic_truth", "npz")))


def _swap_in(new, root):
    """Move the finished set to ``root``; the old one is deleted only once the new one is in place."""
    old = new.with_name(new.name.replace(".partial-", ".old-"))
    if root.exists():
        os.rename(root, old)
    try:
        os.rename(new, root)
    except OSError:
        if old.exists():
            os.rename(old, root)
        raise
    shutil.rmtree(old, ignore_errors=True)


def generate_synthetic_clotho(root, *, n_clips=None, clip_seconds=5.0, sample_rate=44100, seed=0,
                              progress=True) -> dict:
    """Generate the benchmark at ``root`` unless an identical one is there already.

    Everything is written to a sibling ``<root>.partial-*`` folder and swapped in at the end, so an
    interrupted run never leaves half a data set at ``root`` nor destroys the previous good one.
    """
    started, root = time.perf_counter(), Path(root)
    params = _parameters(n_clips, clip_seconds, sample_rate, seed)

    def summary(reused):
        return {"root": str(root), "counts": dict(params["n_clips"]),
                "seconds": round(time.perf_counter() - started, 3), "reused": reused}

    if _is_complete(root, params):
        return summary(True)
    if root.exists() and (not root.is_dir() or (any(root.iterdir()) and not (root / "synthetic.json").exists())):
        raise DataError(f"refusing to replace {root}: it exists but is not a synthetic data set (no synthetic.json)")
    root.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f"{root.name}.partial-", dir=root.parent))
    try:
        with tqdm(total=sum(params["n_clips"].values()), desc="synthetic clips", unit="clip",
                  disable=not progress) as bar:
            for index in range(len(SPLITS)):
                _write_split(partial, index, params, bar)
        atomic_write_json(partial / "synthetic.json", params)
        _swap_in(partial, root)
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # gone already after a successful swap
    return summary(False)


def load_truth(root, split) -> sp.csr_matrix:
    """The split's truth matrix, checked against its captions CSV so rows and columns line up."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; expected one of {SPLITS}")
    path, captions = Path(root) / f"synthetic_truth_{split}.npz", Path(root) / f"clotho_captions_{split}.csv"
    for required in (path, captions):
        if not required.is_file():
            raise DataError(f"{required} is missing; generate the set with generate_synthetic_clotho")
    try:
        truth = sp.csr_matrix(sp.load_npz(path))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise DataError(f"{path} is not a readable truth matrix: {error}") from error
    rows = len(pd.read_csv(captions))
    if truth.shape != (rows, N_CAPTIONS * rows):
        raise DataError(f"{path} has shape {truth.shape} but {captions} has {rows} rows "
                        f"(expected {(rows, N_CAPTIONS * rows)})")
    return truth


def truth_statistics(truth) -> dict:
    """How ambiguous the captions are: SALSA's premise is that many describe more than their own clip."""
    truth = sp.csr_matrix(truth, dtype=bool)
    per_caption = np.asarray(truth.sum(axis=0)).ravel()
    per_clip = np.asarray(truth.sum(axis=1)).ravel()
    return {"n_clips": truth.shape[0], "n_captions": truth.shape[1],
            "matches_per_caption": per_caption, "captions_per_clip": per_clip,
            "min_matches": int(per_caption.min()), "median_matches": float(np.median(per_caption)),
            "mean_matches": float(per_caption.mean()), "max_matches": int(per_caption.max()),
            "fraction_matching_one": float(np.mean(per_caption == 1)),
            "mean_captions_per_clip": float(per_clip.mean()),
            "density": truth.nnz / max(truth.shape[0] * truth.shape[1], 1)}


POOL_SPAWN_KEY = 1000  # the benchmark's splits use spawn keys 0-2 of the same seed: the streams never meet


def tagging_pool(n_clips: int, clip_seconds: float, sample_rate: int, seed: int = 0) -> tuple[np.ndarray, list[dict]]:
    """Clips drawn like the benchmark's (same sources, attributes and mixing), without captions.

    The stand-in for AudioSet in the tiny profile: the audio encoder is pretrained to tag these before
    it sees a caption. Rendered directly at ``sample_rate`` from a seed stream the benchmark never
    uses; ``pool_overlap`` checks that no clip repeats one of the benchmark's.
    """
    params = _parameters({"development": _integer("n_clips", n_clips, 1)}, clip_seconds, sample_rate, seed)
    n = round(params["clip_seconds"] * sample_rate)
    meta_seed, audio_seed = np.random.SeedSequence(seed, spawn_key=(POOL_SPAWN_KEY,)).spawn(2)
    meta_rng, clips = np.random.default_rng(meta_seed), []
    audio = np.empty((n_clips, n), dtype=np.float32)
    for i, clip_seed in enumerate(audio_seed.spawn(n_clips)):
        clip = {"snr_db": float(meta_rng.uniform(20, 35)), "peak": float(meta_rng.uniform(0.6, 0.9)),
                "events": _sample_events(meta_rng, n)}
        audio[i] = _render(np.random.default_rng(clip_seed), clip, n, sample_rate)
        clips.append(clip)
    return audio, clips


def clip_signature(clip: dict, n_samples: int) -> str:
    """What makes two clips the same regardless of sample rate: their events and where they lie."""
    return json.dumps([[e["source"], e["attributes"], round(e["onset_sample"] / n_samples, 3),
                        round(e["offset_sample"] / n_samples, 3), round(e["gain_db"], 1)] for e in clip["events"]],
                      sort_keys=True)


def pool_overlap(pool_clips: list[dict], pool_samples: int, root) -> list[tuple[int, str, str]]:
    """(pool index, benchmark split, file name) of every pool clip that repeats a benchmark clip."""
    pool = {clip_signature(c, pool_samples): i for i, c in enumerate(pool_clips)}
    hits = []
    for split in SPLITS:
        record = json.loads((Path(root) / f"synthetic_events_{split}.json").read_text(encoding="utf-8"))
        n = round(record["clip_seconds"] * record["sample_rate"])
        hits += [(pool[sig], split, c["file_name"]) for c in record["clips"]
                 if (sig := clip_signature(c, n)) in pool]
    return hits
