"""scripts/evaluate.py on a tiny generated CSV: both decoders, whole-file and streamed, table and JSON."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("jiwer", reason="jiwer (the WER/CER library evaluate.py uses) is not installed")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import evaluate  # noqa: E402

SENTENCES = ["turn on the kitchen lights", "what time is it"]


@pytest.fixture(scope="module")
def tiny_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    directory = tmp_path_factory.mktemp("tiny_set")
    rows = []
    for i, text in enumerate(SENTENCES):
        wav = directory / f"utt{i}.wav"
        subprocess.run(["espeak-ng", "-w", str(wav), text], check=True, capture_output=True)
        rows.append([wav.name, wav.stat().st_size, text])
        wav.with_suffix(".txt").write_text(text + "\n")
    path = directory / "set.csv"
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows([["wav_filename", "wav_filesize", "transcript"], *rows])
    return path


def test_error_rates():
    perfect = evaluate.error_rates(["hello world"], ["hello world"])
    assert perfect["wer"] == 0 and perfect["cer"] == 0
    wrong = evaluate.error_rates(["hello world", "a b"], ["hello word", "a b"])
    assert wrong["wer"] == pytest.approx(1 / 4)
    assert wrong["cer"] == pytest.approx(1 / 14)


def test_csv_and_folder_load_the_same_items(tiny_csv: Path):
    from_csv = evaluate.load_dataset(tiny_csv)
    from_folder = evaluate.load_dataset(tiny_csv.parent)
    assert [i.transcript for i in from_csv] == SENTENCES
    assert sorted((i.wav, i.transcript) for i in from_csv) == sorted(
        (i.wav, i.transcript) for i in from_folder
    )


def test_evaluate_cli_writes_table_and_json(tiny_csv: Path, small_model_dir: Path, tmp_path: Path, capsys):
    out = tmp_path / "eval.json"
    md = tmp_path / "eval.md"
    argv = [str(tiny_csv), "--model-dir", str(small_model_dir), "--beam-width", "8", "--json", str(out),
            "--markdown", str(md)]  # fmt: skip
    assert evaluate.main(argv) == 0
    table = capsys.readouterr().out
    assert "| greedy | whole |" in table and "| stream |" in table
    result = json.loads(out.read_text())
    configs = {(r["decoder"], r["path"]) for r in result["rows"]}
    assert configs == {("greedy", "whole"), ("greedy", "stream"), ("beam", "whole"), ("beam", "stream")}
    for row in result["rows"]:
        assert row["n"] == len(SENTENCES) and row["wer"] >= 0 and row["cer"] >= 0
    assert [s["reference"] for s in result["samples"]] == SENTENCES
    assert "| decoder | path |" in md.read_text()
