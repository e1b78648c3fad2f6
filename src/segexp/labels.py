"""Label conventions shared by the data, the losses and the metrics."""

IGNORE_INDEX: int = 255
"""The label of void pixels (VOC's object outlines, unlabelled pixels, crop padding): no loss and no score."""
