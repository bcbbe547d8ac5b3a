"""Media decoding: the only stage that opens audio and video files.

``audio`` (any audio file or array -> mono float32 at a rate, resampling, the log-mel front-end ``LogMel``),
``video`` (containers -> aligned audio and low-resolution frames, ``ClipReader``), ``align`` (audio/frame
timelines), ``dft`` (the folded power spectrum behind the front-end). Imports nothing above ``avssl.config``.
"""
