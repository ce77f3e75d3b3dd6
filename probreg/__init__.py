"""probreg: probabilistic regression with L2 multivariate Huber distributions."""
