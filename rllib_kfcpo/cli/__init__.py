"""Command line: rllib train / evaluate / plot."""
