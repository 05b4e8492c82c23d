"""Text from a trained run: feed it a prompt, then draw one byte at a time from its prediction.

A run's folder holds everything needed: `config.json` names its design and
`weights.pt` holds its parameters in that design's layout (whatever path
trained it). Sampling is seeded, so the same call prints the same text.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from rnnsweep.data import DataError, load_split
from rnnsweep.grid import Design
from rnnsweep.layout import RUN_CONFIG, WEIGHTS, run_dir
from rnnsweep.model import ByteModel
from rnnsweep.stats import design_label, usable_runs


def load_run(folder: Path) -> ByteModel:
    """The trained model of a finished run's folder, on the CPU."""
    folder = Path(folder)
    try:
        row = pd.read_json(folder / RUN_CONFIG, typ="series")
        weights = torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True)
    except (OSError, ValueError) as err:
        raise DataError(f"{folder} is not a finished run's folder ({err})") from None
    model = ByteModel(Design.from_mapping(row), [0], torch.device("cpu"))
    model.load_replicate(0, weights)
    return model


@torch.no_grad()
def generate(model: ByteModel, prompt: bytes, n_bytes: int, temperature: float, seed: int) -> bytes:
    """`n_bytes` bytes that continue `prompt`, each drawn from softmax(logits / temperature)."""
    generator = torch.Generator().manual_seed(seed)
    states = model.initial_state(1)
    logits = None
    for byte in prompt:
        logits, states = model.logits(torch.tensor([[byte]]), states)  # (1, 1, 256)
    out = bytearray()
    for _ in range(n_bytes):
        probs = torch.softmax(logits[0, 0].double() / temperature, dim=0) if logits is not None else torch.full((256,), 1 / 256)
        byte = int(torch.multinomial(probs, 1, generator=generator))
        out.append(byte)
        logits, states = model.logits(torch.tensor([[byte]]), states)
    return bytes(out)


@dataclass(frozen=True)
class SampleSettings:
    bytes: int
    temperature: float
    prompt_bytes: int
    seed: int


def _fence(text: str) -> str:
    return f"````text\n{text}\n````"


def samples_markdown(summaries: dict[str, Path], data_dir: Path, settings: SampleSettings) -> str:
    """A page of text from the best run of each stage, all continuing one fixed prompt from the test split."""
    prompt = load_split(Path(data_dir), "test")[: settings.prompt_bytes].tobytes()
    lines = [
        "# Samples",
        "",
        f"The best run of each stage (lowest `min_loss`) continues the first {len(prompt)} bytes of the test split "
        f"for {settings.bytes} bytes, at temperature {settings.temperature:g}, with seed {settings.seed}. The text is "
        "shown as UTF-8, with undecodable bytes replaced.",
        "",
        "Prompt:",
        "",
        _fence(prompt.decode("utf-8", errors="replace")),
    ]
    for stage, path in summaries.items():
        summary = pd.read_csv(path)
        best = usable_runs(summary).sort_values(["min_loss", "id"]).head(1)
        lines += ["", f"## {stage}", ""]
        if best.empty:
            lines.append("No usable run.")
            continue
        row = best.iloc[0]
        model = load_run(run_dir(Path(path).parent, row["id"]))
        text = generate(model, prompt, settings.bytes, settings.temperature, settings.seed)
        lines += [
            f"Run `{row['id']}`, {design_label(row)}: min_loss {row['min_loss']:.4f} nats/byte, "
            f"test_bpb {row['test_bpb']:.4f} bits/byte.",
            "",
            _fence(text.decode("utf-8", errors="replace")),
        ]
    return "\n".join(lines) + "\n"
