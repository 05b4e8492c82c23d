"""Text from a trained run: feed it a prompt, then draw one token (a byte, or a BPE piece) at a time from its prediction.

A run's folder holds everything needed but the vocabulary: `config.json`
names its design and what it read, and `weights.pt` holds its parameters in
that design's layout (whatever path trained it). A BPE run's vocabulary is
the data folder's, used only if it is the one the run was trained on.
Sampling is seeded, so the same call prints the same text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd
import torch

from rnnsweep.data import DataError, load_split
from rnnsweep.design import BYTE_VOCAB, Design
from rnnsweep.layout import RUN_CONFIG, WEIGHTS, run_dir
from rnnsweep.model import ByteModel
from rnnsweep.results import finished_record
from rnnsweep.ranking import DEFAULT, ranked_runs
from rnnsweep.stats import design_label
from rnnsweep.tokens import BYTES, Vocabulary, encode, load_text, read_tokenizer


def _run_config(folder: Path) -> dict:
    try:
        row = json.loads((Path(folder) / RUN_CONFIG).read_text())
        if not isinstance(row, dict):
            raise ValueError(f"{RUN_CONFIG} is not a JSON object")
        return row
    except (OSError, ValueError) as err:
        raise DataError(f"{folder} is not a finished run's folder ({err})") from None


def load_run(folder: Path) -> ByteModel:
    """The trained model of a finished run's folder, on the CPU: only weights its result record names."""
    return load_runs([folder])


def load_runs(folders: Sequence[Path], dtype: torch.dtype = torch.float32) -> ByteModel:
    """The trained runs of one shape and vocabulary as one model on the CPU, replicate i = folders[i] (a superset
    model where their designs differ): only weights their result records name."""
    rows = [_run_config(folder) for folder in folders]
    designs = [Design.from_mapping(row) for row in rows]
    vocabs = {int(row.get("vocab_size", BYTE_VOCAB)) for row in rows}
    if len(vocabs) != 1 or len({(d.n_layers, d.state_size) for d in designs}) != 1:
        raise DataError("runs loaded together must share their depth, width and vocabulary")
    weights = [_trained_weights(Path(folder)) for folder in folders]
    try:
        return ByteModel(designs, [0] * len(designs), torch.device("cpu"), dtype=dtype,
                         superset=len(set(designs)) > 1, vocab=vocabs.pop(), weights=weights)
    except ValueError as err:
        raise DataError(f"the weights of {', '.join(map(str, folders))} do not fit their designs ({err})") from None


def _trained_weights(folder: Path) -> dict[str, torch.Tensor]:
    """A finished run's weights, only if its result record names them (hash checked)."""
    try:
        finished_record(folder)
        return torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True)
    except (OSError, ValueError) as err:
        raise DataError(f"{folder} is not a finished run's folder ({err})") from None


def reading_of(folder: Path, data_dir: Path) -> tuple[Vocabulary, Callable[[bytes], list[int]]]:
    """What a run's ids stand for, and how a prompt becomes its ids; a BPE run needs the vocabulary it was trained on."""
    row = _run_config(folder)
    if row.get("tokenizer", "bytes") == "bytes":
        return BYTES, list
    text = load_text(data_dir, row["tokenizer"], int(row["vocab_size"]))
    if text.vocab.id != row.get("tokens"):
        raise DataError(f"{folder} was trained on other BPE ids than {data_dir} holds now; train it again first")
    tokenizer = read_tokenizer(data_dir)
    return text.vocab, lambda prompt: encode(tokenizer, prompt).tolist()


@torch.no_grad()
def generate(
    model: ByteModel, prompt: bytes | list[int], n_bytes: int, temperature: float, seed: int, vocab: Vocabulary = BYTES
) -> bytes:
    """`n_bytes` bytes that continue the ids of `prompt`, each id drawn from softmax(logits / temperature)."""
    generator = torch.Generator().manual_seed(seed)
    states = model.initial_state(1)
    logits = None
    for token in prompt:
        logits, states = model.logits(torch.tensor([[token]]), states)  # (1, 1, vocab)
    out = bytearray()
    while len(out) < n_bytes:
        uniform = torch.full((model.vocab,), 1 / model.vocab, dtype=torch.float64)
        probs = torch.softmax(logits[0, 0].double() / temperature, dim=0) if logits is not None else uniform
        token = int(torch.multinomial(probs, 1, generator=generator))
        out += vocab.pieces[token]
        logits, states = model.logits(torch.tensor([[token]]), states)
    return bytes(out[:n_bytes])


@dataclass(frozen=True)
class SampleSettings:
    bytes: int
    temperature: float
    prompt_bytes: int
    seed: int
    rank_by: str = DEFAULT  # which run of a stage is its best


def _fence(text: str) -> str:
    return f"````text\n{text}\n````"


def samples_markdown(summaries: dict[str, Path], data_dir: Path, settings: SampleSettings) -> str:
    """A page of text from the best run of each stage, all continuing one fixed prompt from the test split."""
    prompt = load_split(Path(data_dir), "test")[: settings.prompt_bytes].tobytes()
    lines = [
        "# Samples",
        "",
        f"The best run of each stage (lowest `{settings.rank_by}`) continues the first {len(prompt)} bytes of the test split "
        f"for {settings.bytes} bytes, at temperature {settings.temperature:g}, with seed {settings.seed}. The text is "
        "shown as UTF-8, with undecodable bytes replaced.",
        "",
        "Prompt:",
        "",
        _fence(prompt.decode("utf-8", errors="replace")),
    ]
    for stage, path in summaries.items():
        summary = pd.read_csv(path)
        best = ranked_runs(summary, settings.rank_by).head(1)
        lines += ["", f"## {stage}", ""]
        if best.empty:
            lines.append("No usable run.")
            continue
        row = best.iloc[0]
        folder = run_dir(Path(path).parent, row["id"])
        vocab, encode_prompt = reading_of(folder, Path(data_dir))
        text = generate(load_run(folder), encode_prompt(prompt), settings.bytes, settings.temperature, settings.seed, vocab)
        unit = "byte" if vocab is BYTES else "token"
        lines += [
            f"Run `{row['id']}`, {design_label(row)}: min_loss {row['min_loss']:.4f} nats/{unit}, "
            f"test_bpb {row['test_bpb']:.4f} bits/byte.",
            "",
            _fence(text.decode("utf-8", errors="replace")),
        ]
    return "\n".join(lines) + "\n"
