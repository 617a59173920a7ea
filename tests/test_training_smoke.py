"""The training script's pieces on tiny data, a few steps each, so that `scripts/train_default.py` cannot rot.

Runs the real script up to its export stage (text → espeak-ng audio → training → upstream checkpoint) in a
temporary work directory, then checks the export round trip: the checkpoint convert.py reads gives the NumPy
backend the torch model's probabilities. Nothing here touches models/default.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")

torch = pytest.importorskip("torch")


def test_corpus_normalisation_and_numbers():
    from training import corpus

    assert corpus.number_words(0) == "zero"
    assert corpus.number_words(1234) == "one thousand two hundred thirty four"
    assert corpus.number_words(40_000_017) == "forty million seventeen"
    assert corpus.ordinal_words(21) == "twenty first"
    assert corpus.year_words(1984) == "nineteen eighty four"
    assert corpus.year_words(2005) == "two thousand five"
    assert corpus.year_words(1905) == "nineteen oh five"
    assert corpus.normalize("Don't panic -- it's 42!") == "don't panic it's forty two"
    assert corpus.normalize("The IBM PC") is None  # espeak spells acronyms out: not a faithful transcript
    assert corpus.normalize("Call Dr. Smith") is None
    assert corpus.normalize("'Quoted' words") == "quoted words"
    assert "turn on the kitchen lights" in corpus.command_sentences()


def test_heldout_sentences_are_not_training_text():
    from training import corpus

    heldout = corpus.read_sentences(corpus.HELDOUT_FILE)
    dev = corpus.read_sentences(corpus.DEV_FILE)
    assert len(heldout) >= 150 and len(dev) >= 50
    assert not set(heldout) & set(dev)
    assert all(set(s) <= corpus.ALPHABET_CHARS for s in heldout + dev)
    train = corpus.build_corpus(n_numbers=2000, n_word_sequences=10)
    seen = set(train.lm_sentences()) | set(train.word_sequences)
    assert not seen & (set(heldout) | set(dev))
    assert not set(corpus.demo_sentences()) & set(heldout)


def test_windows_match_the_service_features():
    from app.speech.features import context_windows
    from training.model import DeepSpeechModel

    frames = np.random.default_rng(0).normal(size=(23, 26)).astype(np.float32)
    windows = DeepSpeechModel.windows(torch.from_numpy(frames)[None])[0].numpy()
    np.testing.assert_array_equal(windows, context_windows(frames).reshape(23, -1))


def test_train_default_pieces_and_export_round_trip(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    import train_default

    from app.speech.features import context_windows
    from app.speech.runtime.base import LstmState
    from app.speech.runtime.numpy_backend import NumpyAcousticModel
    from dsconvert.weights import read_checkpoint
    from training import synth
    from training.export import torch_probabilities
    from training.model import DeepSpeechModel
    from training.train import load_best, make_examples

    work = tmp_path / "work"
    argv = ["--workdir", str(work), "--out", str(tmp_path / "never-written"), "--width", "32",
            "--fortunes", "12", "--commands", "6", "--numbers", "4", "--word-sequences", "4",
            "--demo-repeats", "1", "--minutes", "0.5", "--max-steps", "4", "--dev-limit", "8",
            "--stop-after", "export"]  # fmt: skip
    assert train_default.main(argv) == 0

    # Resumable: a second run finds the shards and the finished training, and exports again.
    assert train_default.main(argv) == 0

    (run_dir,) = work.glob("run-w32-*")
    last = torch.load(run_dir / "last.pt", weights_only=False)
    assert last["state"]["step"] == 4
    assert all(np.isfinite(h["dev_cer"]) for h in last["state"]["history"])
    model = DeepSpeechModel(32)
    load_best(model, run_dir)
    assert not torch.allclose(model.feature_std, torch.ones(26))  # normalisation was set from the data

    weights = read_checkpoint(run_dir / "checkpoint")  # what scripts/convert.py --checkpoint reads
    assert weights.n_hidden == 32 and weights.n_classes == 29
    (dev_dir,) = work.glob("dev-*")
    features, _ = synth.load_shards(sorted(dev_dir.glob("shard-*.npz")))
    frames = features[0].astype(np.float32)
    numpy_model = NumpyAcousticModel(weights.arrays, max_steps=len(frames))
    probs, _ = numpy_model.run_window(context_windows(frames), LstmState.zeros(32))
    assert np.max(np.abs(probs - torch_probabilities(model, frames))) <= 1e-4
    assert make_examples([frames], ["hello"])[0].labels.tolist() == [8, 5, 12, 12, 15]
