"""What several test modules share: dataset trees on disk, spec texts and fabricated table runs, the tiny
training run. Fixtures live in conftest.py files; plain functions and constants live here."""
