"""FoldedPowerSpectrum (the ONNX front-end's power spectrum) equals |torch.stft|^2 on the bins it keeps."""

import pytest
import torch
import torch.nn.functional as F

from avssl.media.audio import LogMel, _window
from avssl.config import AudioConfig
from avssl.media.dft import FoldedPowerSpectrum


@pytest.mark.parametrize("n_fft,win,hop,window", [(512, 400, 160, "hann"), (400, 400, 160, "hann"),
                                                  (511, 300, 97, "hamming"), (512, 511, 100, "hamming"),
                                                  (256, 64, 64, "hann")])
def test_folded_power_equals_stft(n_fft, win, hop, window):
    w = _window(window, win)
    left = (n_fft - win) // 2
    w = F.pad(w, (left, n_fft - win - left))
    g = torch.Generator().manual_seed(0)
    for length in (5 * hop + 3, 4000, 1):
        x = torch.randn(3, length, generator=g) * 0.3
        ref = torch.stft(x.double(), n_fft, hop, n_fft, w, center=True, pad_mode="constant",
                         return_complex=True).abs().square()  # [B, bins, T], float64
        for bins in ((0, n_fft // 2 + 1), (3, n_fft // 3)):
            got = FoldedPowerSpectrum(n_fft, hop, w, bins)(x)
            assert got.shape == (3, length // hop + 1, bins[1] - bins[0])
            want = ref[:, bins[0] : bins[1]].transpose(1, 2).float()
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.max()))


def test_export_mode_keeps_only_the_bins_the_mel_filters_use():
    m = LogMel(AudioConfig())  # 512-point FFT, 60 Hz - 7.8 kHz: bins 2..249 of 0..256
    assert m.folded.cos.shape == (200, 248)  # 200 sample pairs (window support 399 samples) x 248 bins
    x = torch.randn(2, 16000) * 0.1
    torch.testing.assert_close(LogMel(AudioConfig(), export_mode=True)(x), m(x), rtol=1e-4, atol=1e-4)
