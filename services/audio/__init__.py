"""The audio service: speech synthesis (Piper) and recognition (Whisper), both streaming."""
