"""Files in and out: video (PyAV), images, atomic outputs, hashes, sample media."""
