"""End-to-end tests: real pods on the test bed's real node (a package, so module names stay unique)."""
