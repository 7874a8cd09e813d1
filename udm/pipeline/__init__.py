"""Where the ConfigDict stops: build, train, sample-and-score, reports."""
