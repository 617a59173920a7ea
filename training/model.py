"""DeepSpeech's network (`create_model`) in PyTorch, at a small width, with the input normalisation in front.

frames (B, T, 26) raw MFCCs → 19-frame context windows with 9 zero frames each side (zeros in RAW feature
space, as DeepSpeech pads) → normalise per coefficient → layer_1..3 dense + clipped ReLU → LSTM (one layer,
no forget bias beyond the learned one) → layer_5 dense + clipped ReLU → layer_6 dense → logits (T, B, 29).
`training.export` folds the normalisation into layer_1 and writes upstream-named arrays.
"""

from __future__ import annotations

import torch
from torch import nn

N_INPUT = 26
N_CONTEXT = 9
WINDOW = 2 * N_CONTEXT + 1
RELU_CLIP = 20.0


class DeepSpeechModel(nn.Module):
    def __init__(self, n_hidden: int = 256, n_classes: int = 29, dropout: float = 0.0) -> None:
        super().__init__()
        self.n_hidden = n_hidden
        self.n_classes = n_classes
        # Per-coefficient mean and std of the training features (set by set_normalization).
        self.register_buffer("feature_mean", torch.zeros(N_INPUT))
        self.register_buffer("feature_std", torch.ones(N_INPUT))
        self.layer_1 = nn.Linear(WINDOW * N_INPUT, n_hidden)
        self.layer_2 = nn.Linear(n_hidden, n_hidden)
        self.layer_3 = nn.Linear(n_hidden, n_hidden)
        self.lstm = nn.LSTM(n_hidden, n_hidden)
        self.layer_5 = nn.Linear(n_hidden, n_hidden)
        self.layer_6 = nn.Linear(n_hidden, n_classes)
        self.dropout = nn.Dropout(dropout)
        # He initialisation for the clipped-ReLU layers: PyTorch's default (uniform, variance 1/(3 fan_in))
        # shrinks the signal through three layers and slows the escape from CTC's all-blank plateau.
        for layer in (self.layer_1, self.layer_2, self.layer_3, self.layer_5):
            nn.init.kaiming_uniform_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)
        nn.init.xavier_uniform_(self.layer_6.weight)
        nn.init.zeros_(self.layer_6.bias)
        with torch.no_grad():  # forget gate bias 1 (PyTorch gate order i, f, g, o) to start remembering
            self.lstm.bias_ih_l0[n_hidden : 2 * n_hidden].fill_(1.0)
            self.lstm.bias_hh_l0[n_hidden : 2 * n_hidden].zero_()

    def set_normalization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.feature_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.feature_std.copy_(torch.as_tensor(std, dtype=torch.float32).clamp_min(1e-3))

    @staticmethod
    def windows(frames: torch.Tensor) -> torch.Tensor:
        """(B, T, 26) → (B, T, 494): frame t's window is frames t-9..t+9, zeros outside the sequence."""
        padded = nn.functional.pad(frames, (0, 0, N_CONTEXT, N_CONTEXT))
        win = padded.unfold(1, WINDOW, 1)  # (B, T, 26, 19)
        return win.transpose(2, 3).reshape(frames.shape[0], frames.shape[1], WINDOW * N_INPUT)

    def normalized_windows(self, frames: torch.Tensor) -> torch.Tensor:
        mean = self.feature_mean.repeat(WINDOW)
        std = self.feature_std.repeat(WINDOW)
        return (self.windows(frames) - mean) / std

    def forward_windows(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Normalised windows (B, T, 494) → logits (T, B, classes) and the LSTM state."""
        x = x.transpose(0, 1)  # time-major like upstream
        for layer in (self.layer_1, self.layer_2, self.layer_3):
            x = self.dropout(torch.clamp(layer(x), 0.0, RELU_CLIP))
        x, state = self.lstm(x, state)
        x = self.dropout(torch.clamp(self.layer_5(x), 0.0, RELU_CLIP))
        return self.layer_6(x), state

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Raw MFCC frames (B, T, 26), zero-padded at the end → logits (T, B, classes).

        Padding after a sequence's end does not change its outputs: the LSTM is unidirectional and the right
        context of its last frames sees zeros, which is what DeepSpeech pads with.
        """
        logits, _ = self.forward_windows(self.normalized_windows(frames))
        return logits

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
