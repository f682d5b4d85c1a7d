"""Which model the user means, where its files are, who it is, how it loads, which matrices t2 adapts."""
