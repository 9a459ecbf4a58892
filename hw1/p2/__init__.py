"""Problem 2: the satellite images and masks, the segmentation models, the focal loss and the training run."""
