"""The synthetic benchmark's sound sources: one small synthesizer per source, attributes as arguments.

Each takes (rng, t, sr, attributes) and returns a mono signal of len(t) samples whose pitch, speed
and loudness follow the attributes its captions may claim (``synth.SOURCES`` lists which ones apply).
"""

from __future__ import annotations

import numpy as np
from scipy import signal


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
