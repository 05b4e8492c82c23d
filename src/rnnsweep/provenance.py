"""What a run's numbers depend on, as one fingerprint that its result and checkpoint carry.

A run's curve, weights and losses are determined by its manifest row (design,
replicate, seed, training settings, precision, tokenizer and vocabulary size),
by the bytes it trains and is evaluated on, by the token ids it reads of them
(for a BPE run: the tokenizer file and the id files, as `tokens_id`), and by
the engine's arithmetic: its version and the path that
trains the run (the row's `engine`: its design's own model, or a superset
model of its shape). The fingerprint hashes all three. A result or checkpoint is used only where its fingerprint equals the
one its manifest row and the data folder give now; anything else belongs to
other settings or other bytes and is set aside, never used.
"""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np

from rnnsweep import config
from rnnsweep.grid import READING, Run

#: The engine's arithmetic. Bump it with any change to model.py, optim.py or the
#: training loop that can change a single number a run produces: every result
#: made before then is retrained rather than reused.
ENGINE = "engine-1"
#: What a fingerprint and a data id look like: 16 lower-case hex digits.
HASH = re.compile(r"[0-9a-f]{16}")


def split_sha256(data: np.ndarray) -> str:
    """SHA-256 of a split's bytes."""
    return hashlib.sha256(memoryview(np.ascontiguousarray(data))).hexdigest()


def data_id(train: np.ndarray, valid: np.ndarray, test: np.ndarray) -> str:
    """The identity of the bytes a run reads: the training split and the two it is scored on, by content."""
    return digest_of({split: split_sha256(data) for split, data in zip(("train", "valid", "test"), (train, valid, test))})


def digest_of(parts: dict[str, str]) -> str:
    """16 hex digits naming an ordered set of named hashes (of splits, of files)."""
    return hashlib.sha256("".join(f"{name}:{sha}\n" for name, sha in parts.items()).encode()).hexdigest()[:16]


def fingerprint(run: Run, data: str, tokens: str | None = None) -> str:
    """16 hex digits that change whenever anything that determines the run's numbers changes.

    `tokens` names the tokenizer and id files a BPE run reads (rnnsweep.tokens);
    a byte run reads the bytes alone. The engine is the version and the path
    together. The design path is the arithmetic `ENGINE` always named, and a
    byte run's row leaves out its tokenizer columns, and a training setting at
    the default the schema gives it (training as it was before the key existed)
    is left out, so results made before paths, tokenizers or such a setting
    existed keep their fingerprints and stay valid.
    """
    row = run.row()
    for key, value in config.training_defaults().items():
        if row.get(key, value) == value:
            row.pop(key, None)
    path = row.pop("engine")
    engine = ENGINE if path == "design" else f"{ENGINE}/{path}"
    content: dict[str, object] = {"run": row, "data": data, "engine": engine}
    if run.tokenizer == "bytes":
        for key in READING:
            row.pop(key)
    elif tokens is None:
        raise ValueError(f"run {run.id} reads {run.tokenizer} tokens: its fingerprint needs the tokens' id")
    else:
        content["tokens"] = tokens
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
