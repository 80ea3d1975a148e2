"""Fuzzed inputs: every parser of another party's bytes ends in a typed error, never a crash or a hang."""
