"""Problem 1 data and its views: image folders and the Office-Home CSV, the decoded-image cache, the augmentation
recipes, and those views as batched ops on the device."""
