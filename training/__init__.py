"""Train the small DeepSpeech-architecture default model on synthetic espeak-ng speech (see scripts/train_default.py).

corpus: text (fortunes, word lists, numbers and dates, commands) · synth: espeak-ng audio + augmentation → cached
features · model: the network in PyTorch · export: upstream-named weights with the normalisation folded in ·
heldout: the held-out evaluation set.
"""
