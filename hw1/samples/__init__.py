"""Data in the course layout without the course data: the synthetic sample, Fashion-MNIST, and the stamp that keeps
two writes from mixing in one folder."""
